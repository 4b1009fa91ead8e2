"""Text-to-image and image-to-text recall, ranked exactly as Chinese-CLIP's scripts rank.

The reference scores every (query, key) pair, then sorts each query's list with Python's
stable ``sorted(..., reverse=True)``: among equal scores the key stored first wins. Here the
ranking is a chunked matrix product plus ``torch.topk``, and rows where a tie could reorder
the top k are re-ranked with a stable sort, so the result is the same on exact ties.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qaclip_harness.errors import DatasetError

RANKS = (1, 5, 10)
NEAR_TIE_EPS = 1e-6
_CHUNK_ELEMENTS = 1 << 25  # scores held at once (128 MiB of fp32)


def _as_features(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).float()
    if t.dim() != 2:
        raise ValueError(f"{what} must be a [N, D] matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return t


def _rank_chunk(
    scores: torch.Tensor, k: int, boundaries: Sequence[int], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k indices of each row (ties: lower index first) and a near-tie flag per row."""
    n_keys = scores.shape[1]
    kk = min(k + 1, n_keys)  # one extra to see the gap after rank k
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    # a row is ambiguous when equal scores sit next to each other inside the top k, or when the
    # k-th score also occurs outside the top k (topk may have picked the wrong one of them); the
    # values topk returns are exact, so the latter is the case iff the (k+1)-th value equals the k-th
    ties = (
        (vals[:, 1:] == vals[:, :-1]).any(dim=1)
        if kk > 1
        else torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    )
    idx = idx[:, :k].clone()
    if ties.any():
        rows = ties.nonzero().squeeze(1)
        idx[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True)[1][:, :k]
    return idx, _near(vals, kk, boundaries, eps)


def _near(vals: torch.Tensor, kk: int, boundaries: Sequence[int], eps: float) -> torch.Tensor:
    """Per row of sorted top-kk values: whether the gap at some rank boundary is below eps."""
    near = torch.zeros(len(vals), dtype=torch.bool, device=vals.device)
    for r in boundaries:
        if r < kk:
            near |= (vals[:, r - 1] - vals[:, r]) < eps
    return near


def _column_candidates(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[m, C] values and row indices of each column's first m = min(k + 1, rows) scores.

    The first min(k, m) rows are exactly the column's top k under (score descending, lower row
    first) as a set; the last row's value is the (k+1)-th score (its row may be any of a tie).
    """
    n_rows = scores.shape[0]
    m = min(k + 1, n_rows)
    vals, idx = torch.topk(scores, m, dim=0, largest=True, sorted=True)
    if m > k:
        # topk may have picked the wrong ones of equal scores at rank k only if the (k+1)-th
        # score equals the k-th: re-rank those columns with a stable sort
        ties = vals[k] == vals[k - 1]
        if ties.any():
            cols = ties.nonzero().squeeze(1)
            sv, si = torch.sort(scores[:, cols], dim=0, descending=True, stable=True)
            vals[:, cols], idx[:, cols] = sv[:m], si[:m]
    return vals, idx


def _merge_candidates(vals: torch.Tensor, idx: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each column's candidates by (score descending, lower index first); keep the first ``keep``."""
    order = torch.argsort(idx, dim=0)  # indices are distinct within a column
    vals, idx = vals.gather(0, order), idx.gather(0, order)
    order = torch.sort(vals, dim=0, descending=True, stable=True)[1][:keep]
    return vals.gather(0, order), idx.gather(0, order)


def _rank_both(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_queries: Sequence[int],
    k: int,
    chunk_size: int | None,
    boundaries: Sequence[int],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank keys for every query, and queries for the keys ``key_queries``, from one pass of products.

    Each chunk of scores is ranked along its rows (the top k keys of each query), and its top
    k + 1 per column of ``key_queries`` is merged into a running top k + 1 (scores descending,
    lower index first), so memory stays bounded. Empty ``key_queries`` ranks the rows only.
    """
    n_q, n_k = queries.shape[0], keys.shape[0]
    k_rows, k_cols = min(k, n_k), min(k, n_q)
    keep = min(k_cols + 1, n_q)  # one extra to see the gap after rank k
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(1, n_k))
    keys_t = keys.t().contiguous()
    cols = torch.as_tensor(list(key_queries), dtype=torch.long, device=keys.device)
    every_col = len(cols) == n_k and bool((cols == torch.arange(n_k, device=keys.device)).all())
    out_idx, out_near = [], []
    run_vals = torch.empty(0, len(cols), dtype=queries.dtype, device=keys.device)
    run_idx = torch.empty(0, len(cols), dtype=torch.long, device=keys.device)
    for start in range(0, n_q, chunk_size):
        scores = queries[start : start + chunk_size] @ keys_t
        idx, near = _rank_chunk(scores, k_rows, boundaries, eps)
        out_idx.append(idx.cpu())
        out_near.append(near.cpu())
        if len(cols):
            cvals, cidx = _column_candidates(scores if every_col else scores[:, cols], k_cols)
            run_vals, run_idx = _merge_candidates(
                torch.cat([run_vals, cvals]), torch.cat([run_idx, cidx + start]), keep
            )
    if not out_idx:
        rows_idx, rows_near = torch.empty(0, k_rows, dtype=torch.long), torch.empty(0, dtype=torch.bool)
    else:
        rows_idx, rows_near = torch.cat(out_idx), torch.cat(out_near)
    col_vals, col_idx = run_vals.t(), run_idx.t()
    return rows_idx, rows_near, col_idx[:, :k_cols].cpu(), _near(col_vals, keep, boundaries, eps).cpu()


def topk_desc(
    queries: torch.Tensor | np.ndarray, keys: torch.Tensor | np.ndarray, k: int, chunk_size: int | None = None
) -> torch.Tensor:
    """[Q, min(k, K)] indices of each query's highest dot products; equal scores rank the lower key index first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    q, kt = _as_features(queries, "queries"), _as_features(keys, "keys")
    if kt.shape[0] == 0:
        raise ValueError("there are no keys to rank")
    return _rank_both(q, kt.to(q.device), (), k, chunk_size, (), 0.0)[0]


def recall_at_k(
    predictions: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    ground_truth: Sequence[set[int]],
    ks: Sequence[int] = RANKS,
) -> dict[int, float]:
    """Percent of queries with at least one ground-truth id among their first K predictions."""
    pred = np.asarray(predictions.cpu() if isinstance(predictions, torch.Tensor) else predictions, dtype=np.int64)
    n = len(ground_truth)
    if pred.ndim != 2 or pred.shape[0] != n:
        raise ValueError(f"predictions must be [Q, k] with Q = {n} queries, got shape {pred.shape}")
    if n == 0:
        raise ValueError("there are no queries to score")
    # same arithmetic as the reference: fraction first, then percent
    return {k: c * 1.0 / n * 100 for k, c in _recall_counts(pred, ground_truth, ks).items()}


def _recall_counts(pred: np.ndarray, ground_truth: Sequence[set[int]], ks: Sequence[int]) -> dict[int, int]:
    hits = _hits(pred, ground_truth)
    return {k: int(hits[:, :k].any(axis=1).sum()) for k in ks}


def _hits(pred: np.ndarray, ground_truth: Sequence[set[int]]) -> np.ndarray:
    """[Q, k] bool: whether each prediction is one of its query's ground-truth ids."""
    gt_q = np.repeat(np.arange(len(ground_truth), dtype=np.int64), [len(g) for g in ground_truth])
    gt_ids = np.fromiter((i for g in ground_truth for i in g), dtype=np.int64, count=len(gt_q))
    # map ids to dense codes so that (query, id) packs into one int64 without overflow
    vocab, codes = np.unique(np.concatenate([pred.ravel(), gt_ids]), return_inverse=True)
    m = len(vocab)
    pred_keys = np.arange(pred.shape[0], dtype=np.int64)[:, None] * m + codes[: pred.size].reshape(pred.shape)
    gt_keys = gt_q * m + codes[pred.size :]
    return np.isin(pred_keys, gt_keys)


@dataclass
class RetrievalResult:
    """Recall metrics (percent), counts, top-k predictions and ground truth of one split."""

    metrics: dict[str, float]
    counts: dict[str, int]
    t2i: dict[int, list[int]]
    i2t: dict[int, list[int]]
    text_to_images: dict[int, list[int]]
    image_to_texts: dict[int, list[int]]
    near_ties: dict[str, object] = field(default_factory=dict)
    k: int = 10


def _inverse(text_to_images: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for text_id, image_ids in text_to_images.items():
        for image_id in image_ids:
            out.setdefault(image_id, []).append(text_id)
    return out


def _ids(ids: Sequence[int], what: str) -> list[int]:
    out = [int(i) for i in ids]
    if len(set(out)) != len(out):
        raise DatasetError(f"duplicate {what} ids")
    return out


def evaluate_retrieval(
    image_ids: Sequence[int],
    image_feats: torch.Tensor | np.ndarray,
    text_ids: Sequence[int],
    text_feats: torch.Tensor | np.ndarray,
    text_to_images: Mapping[int, Sequence[int]],
    k: int = 10,
    chunk_size: int | None = None,
    ks: Sequence[int] = RANKS,
    near_tie_eps: float = NEAR_TIE_EPS,
) -> RetrievalResult:
    """Both retrieval directions on normalised features, as Chinese-CLIP's eval scripts compute them."""
    image_ids, text_ids = _ids(image_ids, "image"), _ids(text_ids, "text")
    img, txt = _as_features(image_feats, "image features"), _as_features(text_feats, "text features")
    if img.shape[0] != len(image_ids) or txt.shape[0] != len(text_ids):
        raise ValueError(
            f"{len(image_ids)} image ids for {img.shape[0]} image features, {len(text_ids)} text ids for {txt.shape[0]} text features"
        )
    if not image_ids or not text_ids:
        raise DatasetError(f"nothing to evaluate: {len(image_ids)} images, {len(text_ids)} texts")
    missing = [t for t in text_ids if t not in text_to_images]
    if missing:
        raise DatasetError(f"text ids without ground truth: {missing[:10]}")
    known_images, known_texts = set(image_ids), set(text_ids)
    for text_id, gt in text_to_images.items():
        if text_id not in known_texts:
            raise DatasetError(f"ground truth names text id {text_id}, which has no features")
        bad = [i for i in gt if i not in known_images]
        if bad:
            raise DatasetError(f"text id {text_id}: ground-truth image ids {bad[:10]} have no features")
    txt = txt.to(img.device)
    boundaries = sorted(set(ks) | {k})

    # image -> text: only images that some text describes are queries (the reference's .tr.jsonl)
    image_to_texts = _inverse(text_to_images)
    query_rows = [row for row, i in enumerate(image_ids) if i in image_to_texts]
    query_ids = [image_ids[row] for row in query_rows]
    if not query_ids:
        raise DatasetError("no image has a caption: nothing to score image-to-text")

    # one pass of text x image products ranks both directions: every text queries all images
    t2i_idx, t2i_near, i2t_idx, i2t_near = _rank_both(txt, img, query_rows, k, chunk_size, boundaries, near_tie_eps)
    t2i_pred = np.asarray(image_ids, dtype=np.int64)[t2i_idx.numpy()]
    t2i_gt = [set(text_to_images[t]) for t in text_ids]
    t2i_counts = _recall_counts(t2i_pred, t2i_gt, ks)

    i2t_pred = np.asarray(text_ids, dtype=np.int64)[i2t_idx.numpy()]
    i2t_counts = _recall_counts(i2t_pred, [set(image_to_texts[i]) for i in query_ids], ks)

    # fractions first, then percent; means of fractions, as evaluation.py computes its mean recall
    t2i_frac = [t2i_counts[r] * 1.0 / len(text_ids) for r in ks]
    i2t_frac = [i2t_counts[r] * 1.0 / len(query_ids) for r in ks]
    metrics: dict[str, float] = {}
    for name, fracs in (("t2i", t2i_frac), ("i2t", i2t_frac)):
        for r, frac in zip(ks, fracs):
            metrics[f"{name}_r{r}"] = frac * 100
    metrics["t2i_mean_recall"] = sum(t2i_frac) / len(ks) * 100
    metrics["i2t_mean_recall"] = sum(i2t_frac) / len(ks) * 100
    metrics["mean_recall"] = (sum(t2i_frac) + sum(i2t_frac)) / (2 * len(ks)) * 100
    return RetrievalResult(
        metrics=metrics,
        counts={"num_images": len(image_ids), "num_texts": len(text_ids), "num_i2t_queries": len(query_ids)},
        t2i={t: row.tolist() for t, row in zip(text_ids, t2i_pred)},
        i2t={i: row.tolist() for i, row in zip(query_ids, i2t_pred)},
        text_to_images={t: list(text_to_images[t]) for t in text_to_images},
        image_to_texts=image_to_texts,
        near_ties={"eps": near_tie_eps, "t2i": int(t2i_near.sum()), "i2t": int(i2t_near.sum())},
        k=min(k, len(image_ids)),
    )


def write_predictions(result: RetrievalResult, out_dir: str | Path, split: str = "test") -> dict[str, Path]:
    """Write the reference's prediction and ``.tr.jsonl`` files so its evaluation scripts can score them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "t2i": out / f"{split}_predictions.jsonl",
        "i2t": out / f"{split}_tr_predictions.jsonl",
        "i2t_gt": out / f"{split}_texts.tr.jsonl",
    }
    _write_jsonl(paths["t2i"], ({"text_id": t, "image_ids": v} for t, v in result.t2i.items()))
    _write_jsonl(paths["i2t"], ({"image_id": i, "text_ids": v} for i, v in result.i2t.items()))
    _write_jsonl(paths["i2t_gt"], ({"image_id": i, "text_ids": v} for i, v in result.image_to_texts.items()))
    return paths


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    from qaclip_harness.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
