"""Ranking, recall and zero-shot accuracy equal Chinese-CLIP's scripts on the same features (ties included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qaclip_core.tokenizer import preprocess_text, tokenize
from qaclip_harness.data.prompts import imagenet_templates
from qaclip_harness.eval.zeroshot import build_classifier
from qaclip_harness.metrics.accuracy import accuracy, true_class_probability
from qaclip_harness.metrics.retrieval import evaluate_retrieval, recall_at_k, topk_desc, write_predictions
from tests.conftest import require_reference
from tests.datasets_util import reference_functions, reference_tr_annotation, run_reference_topk, write_features


def _oracle_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Stable descending order: equal scores keep the lower index first (Python's sorted(reverse=True))."""
    idx = np.arange(scores.shape[1])
    return np.stack([np.lexsort((idx, -row))[:k] for row in scores])


@settings(max_examples=60, deadline=None)
@given(
    q=st.integers(1, 12),
    n=st.integers(1, 30),
    d=st.integers(1, 4),
    k=st.integers(1, 12),
    chunk=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_topk_desc_ties_exact(q, n, d, k, chunk, seed):
    rng = np.random.default_rng(seed)
    # few distinct small dyadic values: dot products are exact, so ties are real ties
    queries = rng.integers(-2, 3, size=(q, d)).astype(np.float32) / 2
    keys = rng.integers(-2, 3, size=(n, d)).astype(np.float32) / 2
    got = topk_desc(torch.from_numpy(queries), torch.from_numpy(keys), k, chunk_size=chunk)
    assert got.dtype == torch.long and got.shape == (q, min(k, n))
    assert np.array_equal(got.numpy(), _oracle_topk(queries @ keys.T, k))


def test_topk_desc_random_and_chunking():
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(50, 32, generator=g), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=-1)
    keys[7] = keys[3]  # duplicate key: the later twin must come second
    queries[0] = keys[3]
    full = topk_desc(queries, keys, 10, chunk_size=1000)
    assert torch.equal(full, topk_desc(queries, keys, 10, chunk_size=3))
    assert torch.equal(full, topk_desc(queries.numpy(), keys.numpy(), 10))
    assert np.array_equal(full.numpy(), _oracle_topk((queries @ keys.T).numpy(), 10))
    assert full[0, :2].tolist() == [3, 7]
    with pytest.raises(ValueError, match="NaN"):
        topk_desc(torch.full((1, 2), float("nan")), keys[:, :2], 3)


def test_topk_desc_all_equal_and_signed_zero():
    keys = torch.zeros(40, 3)
    keys[::3, 0] = -0.0
    assert topk_desc(torch.ones(2, 3), keys, 10).tolist() == [list(range(10))] * 2


def test_recall_counts_any_ground_truth():
    pred = np.array([[5, 6, 7], [1, 2, 3], [9, 8, 4], [4, 4, 4]])
    gt = [{6}, {3, 1}, {4, 100}, {100}]
    assert recall_at_k(pred, gt, ks=(1, 2, 3)) == {1: 25.0, 2: 50.0, 3: 75.0}
    assert recall_at_k(torch.tensor(pred), gt, ks=(1,)) == {1: 1 * 1.0 / 4 * 100}
    with pytest.raises(ValueError, match="predictions must be"):
        recall_at_k(pred, gt[:3])


# --- against the reference scripts -------------------------------------------------------------

IMG_IDS = [3, 7, 9, 10, 11, 25, 99, 100, 101, 250, 999, 1000, 1001, 4096, 12345, 20000, 31, 5, 800, 77, 42, 8, 60, 61]


def _ground_truth(seed: int):
    """Captions for all but a few images (uncaptioned images are no i2t queries); some name several images."""
    rng = np.random.default_rng(seed)
    captioned = [i for i in IMG_IDS if i not in (25, 800, 61)]
    t2i = {}
    for t in range(36):
        n = 1 + (t % 5 == 0) + (t % 7 == 0)
        gt = [captioned[t % len(captioned)]] + [int(x) for x in rng.choice(captioned, n - 1, replace=False)]
        t2i[500 + 3 * t] = list(dict.fromkeys(gt))
    return t2i


def _features(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    n_img, n_txt = len(IMG_IDS), 36
    if kind == "random":
        img = rng.standard_normal((n_img, 16)).astype(np.float32)
        txt = rng.standard_normal((n_txt, 16)).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    else:  # exact ties everywhere, plus duplicated images and texts
        img = rng.integers(-1, 2, size=(n_img, 3)).astype(np.float32) / 2
        txt = rng.integers(-1, 2, size=(n_txt, 3)).astype(np.float32) / 2
        img[5] = img[17]
        txt[4] = txt[30]
    return img, txt


def _reference_pipeline(tmp: Path, img, txt, t2i):
    """cn_clip's top-k scripts (on CPU) and its scorers; returns predictions and scores."""
    text_ids = list(t2i)
    img_f = write_features(tmp / "img.jsonl", "image_id", IMG_IDS, img)
    txt_f = write_features(tmp / "txt.jsonl", "text_id", text_ids, txt)
    gt = tmp / "test_texts.jsonl"
    gt.write_text("".join(json.dumps({"text_id": t, "text": "x", "image_ids": v}) + "\n" for t, v in t2i.items()))
    reference_tr_annotation(gt)
    t2i_pred = run_reference_topk("make_topk_predictions", img_f, txt_f, tmp / "ref_pred.jsonl")
    i2t_pred = run_reference_topk("make_topk_predictions_tr", img_f, txt_f, tmp / "ref_tr_pred.jsonl")
    require_reference()
    from cn_clip.eval import evaluation, evaluation_tr

    return {
        "t2i": {o["text_id"]: o["image_ids"] for o in t2i_pred},
        "i2t": {o["image_id"]: o["text_ids"] for o in i2t_pred},
        "t2i_score": evaluation.compute_score(str(gt), str(tmp / "ref_pred.jsonl")),
        "i2t_score": evaluation_tr.compute_score(str(tmp / "test_texts.tr.jsonl"), str(tmp / "ref_tr_pred.jsonl")),
        "tr_gt": (tmp / "test_texts.tr.jsonl").read_text(),
        "gt": gt,
    }


def _check_metrics(metrics, t2i_score, i2t_score):
    mean, r1, r5, r10 = t2i_score
    assert (metrics["t2i_r1"], metrics["t2i_r5"], metrics["t2i_r10"], metrics["t2i_mean_recall"]) == (r1, r5, r10, mean)
    mean, r1, r5, r10 = i2t_score
    assert (metrics["i2t_r1"], metrics["i2t_r5"], metrics["i2t_r10"], metrics["i2t_mean_recall"]) == (r1, r5, r10, mean)


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_retrieval_equals_reference(tmp_path, kind):
    t2i = _ground_truth(1)
    img, txt = _features(kind, 2)
    ref = _reference_pipeline(tmp_path, img, txt, t2i)
    ours = evaluate_retrieval(IMG_IDS, torch.from_numpy(img), list(t2i), torch.from_numpy(txt), t2i, k=10, chunk_size=5)

    assert ours.t2i == ref["t2i"]
    assert list(ours.i2t) == [i for i in IMG_IDS if i not in (25, 800, 61)]
    assert ours.i2t == {i: v for i, v in ref["i2t"].items() if i in ours.i2t}
    _check_metrics(ours.metrics, ref["t2i_score"], ref["i2t_score"])
    six = [ours.metrics[f"{d}_r{r}"] for d in ("t2i", "i2t") for r in (1, 5, 10)]
    assert ours.metrics["mean_recall"] == pytest.approx(sum(six) / 6, abs=1e-9)
    assert ours.counts == {"num_images": len(IMG_IDS), "num_texts": len(t2i), "num_i2t_queries": len(IMG_IDS) - 3}
    if kind == "ties":
        assert ours.near_ties["t2i"] > 0 and ours.near_ties["i2t"] > 0
    else:
        assert 0 < ours.metrics["t2i_r10"] < 100  # a non-trivial case

    # our prediction files, scored by the reference's evaluation scripts as they are run
    out = tmp_path / "ours"
    paths = write_predictions(ours, out, split="test")
    assert paths["i2t_gt"].read_text() == ref["tr_gt"]
    for script, gt, pred, prefix in (
        ("evaluation.py", ref["gt"], paths["t2i"], "t2i"),
        ("evaluation_tr.py", paths["i2t_gt"], paths["i2t"], "i2t"),
    ):
        require_reference()
        from cn_clip import eval as ref_eval

        score = tmp_path / f"{prefix}_score.json"
        subprocess.run(
            [sys.executable, str(Path(ref_eval.__file__).parent / script), str(gt), str(pred), str(score)],
            check=True,
            capture_output=True,
        )
        res = json.loads(score.read_text())
        assert res["success"], res
        sj = res["scoreJson"]
        assert (sj["r1"], sj["r5"], sj["r10"], sj["mean_recall"]) == tuple(
            ours.metrics[f"{prefix}_{m}"] for m in ("r1", "r5", "r10", "mean_recall")
        )


def _oracle_retrieval(image_ids, img, text_ids, txt, t2i, k, ks, eps):
    """Both directions from the full score matrix and stable sorts: the brute-force reference."""
    scores = torch.from_numpy(txt) @ torch.from_numpy(img).T
    boundaries = sorted(set(ks) | {k})

    def rank(s, kk):
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        near = torch.zeros(len(s), dtype=torch.bool)
        for r in boundaries:
            if r < min(kk + 1, s.shape[1]):
                near |= (vals[:, r - 1] - vals[:, r]) < eps
        return idx[:, :kk], int(near.sum())

    i2t_gt = {}
    for t, images in t2i.items():
        for i in images:
            i2t_gt.setdefault(i, []).append(t)
    rows = [r for r, i in enumerate(image_ids) if i in i2t_gt]
    t2i_idx, t2i_near = rank(scores, min(k, len(image_ids)))
    i2t_idx, i2t_near = rank(scores.T[rows], min(k, len(text_ids)))
    t2i_pred = {t: [image_ids[j] for j in row] for t, row in zip(text_ids, t2i_idx.tolist())}
    i2t_pred = {image_ids[r]: [text_ids[j] for j in row] for r, row in zip(rows, i2t_idx.tolist())}
    metrics = {}
    for name, pred, gt in (("t2i", t2i_pred, t2i), ("i2t", i2t_pred, i2t_gt)):
        fracs = [sum(bool(set(p[:r]) & set(gt[q])) for q, p in pred.items()) * 1.0 / len(pred) for r in ks]
        metrics.update({f"{name}_r{r}": f * 100 for r, f in zip(ks, fracs)})
        metrics[f"{name}_mean_recall"] = sum(fracs) / len(ks) * 100
    return t2i_pred, i2t_pred, metrics, {"t2i": t2i_near, "i2t": i2t_near}


@settings(max_examples=80, deadline=None)
@given(
    n_img=st.integers(1, 25),
    n_txt=st.integers(1, 30),
    d=st.integers(1, 4),
    k=st.integers(1, 12),
    chunk=st.sampled_from([None, 1, 2, 3, 4, 7, 11, 1000]),
    seed=st.integers(0, 2**16),
)
def test_evaluate_retrieval_ties_equal_full_sort(n_img, n_txt, d, k, chunk, seed):
    """Both directions from one chunked pass equal stable sorts of the full matrix, exact ties included."""
    rng = np.random.default_rng(seed)
    # few distinct small dyadic values: dot products are exact in any order, so ties are real ties
    img = rng.integers(-2, 3, size=(n_img, d)).astype(np.float32) / 2
    txt = rng.integers(-2, 3, size=(n_txt, d)).astype(np.float32) / 2
    image_ids = [int(i) for i in rng.permutation(10 * n_img)[:n_img]]
    text_ids = list(range(100, 100 + n_txt))
    # random ground truth: some images uncaptioned, some texts with several images
    t2i = {t: sorted({int(i) for i in rng.choice(image_ids, 1 + int(rng.integers(0, 3)))}) for t in text_ids}
    ks = (1, 5, 10)
    got = evaluate_retrieval(
        image_ids, torch.from_numpy(img), text_ids, torch.from_numpy(txt), t2i, k=k, chunk_size=chunk, ks=ks
    )
    t2i_pred, i2t_pred, metrics, near = _oracle_retrieval(image_ids, img, text_ids, txt, t2i, k, ks, 1e-6)
    assert got.t2i == t2i_pred
    assert got.i2t == i2t_pred and list(got.i2t) == list(i2t_pred)
    assert got.metrics["t2i_r1"] == metrics["t2i_r1"] and got.metrics["i2t_r10"] == metrics["i2t_r10"]
    assert {m: got.metrics[m] for m in metrics} == metrics
    assert {d: got.near_ties[d] for d in ("t2i", "i2t")} == near


def test_evaluate_retrieval_chunking_same_result():
    """Random float features: every chunk size gives the same predictions, metrics and near ties."""
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(33, 8, generator=g), dim=1)
    img[9] = img[2]  # duplicate image and text: exact ties in both directions
    txt[20] = txt[4]
    t2i = {t: [t % 40, (3 * t) % 40] for t in range(33)}
    runs = [
        evaluate_retrieval(list(range(40)), img, list(range(33)), txt, t2i, k=10, chunk_size=c)
        for c in (None, 1, 4, 7, 32, 33, 34)
    ]
    for r in runs[1:]:
        assert (r.t2i, r.i2t, r.metrics, r.near_ties) == (runs[0].t2i, runs[0].i2t, runs[0].metrics, runs[0].near_ties)


def test_near_ties_diagnostic():
    keys = torch.tensor([[1.0, 0.0], [1.0 - 4e-7, 0.0], [0.0, 1.0]])  # images 1, 2, 3
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # texts 10, 11, 12
    res = evaluate_retrieval([1, 2, 3], keys, [10, 11, 12], queries, {10: [1], 11: [3], 12: [3]}, k=1, ks=(1,))
    # text 10: 1.0 vs 0.9999996 at the rank-1 boundary; 11: a clear winner; 12: images 1 and 3 tie exactly
    assert res.t2i == {10: [1], 11: [3], 12: [1]}
    assert res.near_ties["t2i"] == 2 and res.near_ties["eps"] == 1e-6
    assert res.metrics["t2i_r1"] == 2 * 1.0 / 3 * 100


def test_evaluate_retrieval_checks():
    f = torch.eye(3)
    with pytest.raises(ValueError, match="duplicate image"):
        evaluate_retrieval([1, 1, 2], f, [1, 2, 3], f, {1: [1], 2: [1], 3: [2]})
    with pytest.raises(ValueError, match="without ground truth"):
        evaluate_retrieval([1, 2, 3], f, [1, 2, 3], f, {1: [1], 2: [1]})
    with pytest.raises(ValueError, match=r"ground-truth image ids \[9\]"):
        evaluate_retrieval([1, 2, 3], f, [1, 2, 3], f, {1: [1], 2: [1], 3: [9]})
    res = evaluate_retrieval([1, 2, 3], f, [1, 2, 3], f, {1: [1], 2: [2], 3: [3]})
    assert res.metrics["t2i_r1"] == res.metrics["i2t_r10"] == res.metrics["mean_recall"] == 100.0
    assert res.k == 3 and res.t2i[1] == [1, 2, 3]


# --- zero-shot ---------------------------------------------------------------------------------


def _np2_float(x) -> float:
    # the reference calls float() on a 1-element 1-D array, which NumPy 2 refuses
    return float(np.asarray(x).reshape(()))


def _reference_zeroshot():
    require_reference()
    from cn_clip.clip import tokenize as ref_tokenize
    from cn_clip.eval.data import _preprocess_text

    ns = {
        "torch": torch,
        "tqdm": lambda x: x,
        "_preprocess_text": _preprocess_text,
        "tokenize": ref_tokenize,
        "float": _np2_float,
    }
    return reference_functions("cn_clip.eval.zeroshot_evaluation", ["zero_shot_classifier", "accuracy"], ns)


class _FakeTextModel:
    """Position-weighted sum of a fixed random embedding table: a deterministic text encoder."""

    def __init__(self, dim: int = 24):
        g = torch.Generator().manual_seed(3)
        self.table = torch.randn(21128, dim, generator=g)
        self.table[0] = 0
        self.pos = torch.rand(52, generator=g) + 0.5
        self.calls = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (self.table[tokens] * self.pos[: tokens.shape[1], None]).sum(dim=1)

    def tokenize(self, texts):
        return tokenize([preprocess_text(t) for t in texts])

    def __call__(self, image, text):  # the reference calls model(None, texts)
        return self.encode_text(text)


def test_classifier_equals_reference():
    require_reference()
    from cn_clip.eval.cvinw_zeroshot_templates import openai_templates

    ref = _reference_zeroshot()
    classnames = ["金毛寻回犬", "Golden Retriever", "“引号”里的猫", "ÉCLAIR 蛋糕"]
    model = _FakeTextModel()
    args = type("Args", (), {"context_length": 52, "gpu": "cpu"})()
    expected = ref["zero_shot_classifier"](model, classnames, openai_templates, args)
    for batch_size in (7, 2 * 183, 10_000):
        got = build_classifier(model, classnames, imagenet_templates(), batch_size=batch_size)
        assert got.shape == (24, len(classnames))
        assert torch.allclose(got, expected, atol=1e-6)
    per_class = torch.cat([build_classifier(model, [c], imagenet_templates()) for c in classnames], dim=1)
    assert torch.allclose(build_classifier(model, classnames, imagenet_templates()), per_class, atol=1e-6)


def test_accuracy_equals_reference():
    ref = _reference_zeroshot()["accuracy"]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=g)
    targets = torch.randint(0, 30, (200,), generator=g)
    ours = accuracy(logits, targets, topk=(1, 5))
    top1, top5 = ref(logits, targets, topk=(1, 5))
    assert ours == {"top1": top1 / 200 * 100, "top5": top5 / 200 * 100}
    # the reference scores top-1 on softmax(100 * logits): same argmax
    assert ref((100 * logits).softmax(dim=-1), targets, topk=(1,))[0] / 200 * 100 == ours["top1"]


def test_accuracy_ties_go_to_lower_class():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 1.0, 1.0]])
    assert accuracy(logits, torch.tensor([1, 0, 1]), topk=(1, 2)) == {"top1": 100.0, "top2": 100.0}
    assert accuracy(logits, torch.tensor([2, 3, 3]), topk=(1, 2, 3)) == {
        "top1": 0.0,
        "top2": 1 / 3 * 100,
        "top3": 2 / 3 * 100,
    }


def test_true_class_probability_is_the_references_softmax_output_and_moves_with_the_scale():
    """Mean softmax(100 x cosine) of the true class, in percent, as the reference's zero-shot outputs give it."""
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(50, 7, generator=g) * 0.6 - 0.3
    targets = cos.argmax(dim=1)  # a classifier that is mostly right, as the fixture's
    targets[:10] = torch.randint(0, 7, (10,), generator=g)
    outputs = (100.0 * cos).softmax(dim=-1)  # the reference's run: softmax of the scaled cosines
    expected = outputs.double().gather(1, targets[:, None]).mean().item() * 100
    assert abs(true_class_probability(100.0 * cos, targets) - expected) < 1e-4
    assert abs(true_class_probability(50.0 * cos, targets) - expected) > 1.0  # a scale change cannot hide
    assert accuracy(50.0 * cos, targets) == accuracy(100.0 * cos, targets)  # where top-k cannot see it
    with pytest.raises(ValueError, match="N > 0"):
        true_class_probability(cos[:0], targets[:0])
