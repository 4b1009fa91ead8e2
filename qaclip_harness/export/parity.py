"""Parity of an ONNX export with the PyTorch model: features per tower and batch size, and top-5 rankings on a probe.

The gates and where their numbers come from are in ``parity.yaml`` beside this module.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw

from qaclip_harness.errors import ExportError
from qaclip_harness.tensors import normalise

GATES_FILE = Path(__file__).with_name("parity.yaml")
BATCHES = (1, 7, 64)
TOP_K = 5


@cache
def gates(precision: str) -> dict[str, Any]:
    """The parity gates of ``precision`` (``fp32``: max_abs_diff; ``fp16``: min_cosine; both: tie)."""
    doc = yaml.safe_load(GATES_FILE.read_text(encoding="utf-8"))
    if precision not in doc:
        raise ExportError(f"{GATES_FILE}: no parity gate for precision {precision!r} (have {sorted(doc)})")
    return doc[precision]


# --------------------------------------------------------------------------------------------
# the probe


def _drawn(i: int) -> Image.Image:
    """A generated image (seeded by ``i``) of its own size, shapes and colours: fills batches past the probe set."""
    rng = random.Random(i)
    size = (rng.randint(40, 400), rng.randint(40, 400))
    background = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", size, background)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 6)):
        box = sorted(rng.randint(0, size[0]) for _ in range(2)), sorted(rng.randint(0, size[1]) for _ in range(2))
        xy = (box[0][0], box[1][0], box[0][1], box[1][1])
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(xy, fill=colour)
    for x in range(0, size[0], rng.randint(5, 40)):
        d.line(
            [(x, 0), (size[0] - x, size[1])], fill=tuple(rng.randint(0, 255) for _ in range(3)), width=rng.randint(1, 4)
        )
    return img


def _spread(captions: Sequence[str]) -> list[str]:
    """The shortest and the longest first, so that batches of 1 and 7 already span the lengths."""
    by_len = sorted(captions, key=len)
    head = [
        by_len[0],
        by_len[-1],
        by_len[len(by_len) // 2],
        by_len[1],
        by_len[-2],
        by_len[len(by_len) // 4],
        by_len[-3],
    ]
    return head + [c for c in captions if c not in head]


def probe_inputs(count: int = max(BATCHES)) -> tuple[list[Image.Image], list[str]]:
    """``count`` images and captions: the pinned probe set (qaclip_core/probe), then generated images past its size."""
    from qaclip_harness.probe import load_probe_set

    probe = load_probe_set()
    images = list(probe.images)[:count]
    images += [_drawn(i) for i in range(1, count - len(images) + 1)]
    captions = _spread(probe.captions)
    if len(captions) < count:
        raise ExportError(f"the probe set has {len(captions)} captions; the parity probe needs {count}")
    return images, captions[:count]


# --------------------------------------------------------------------------------------------
# checks


@dataclass
class TowerCheck:
    """One tower at one batch size: the largest component difference and the smallest cosine of normalised features."""

    tower: str
    batch: int
    max_abs_diff: float
    min_cosine: float
    ok: bool


@dataclass
class RankCheck:
    """Top-k lists of one direction: positions that differ, those holding an item whose PyTorch score is within the
    tie of PyTorch's own item there (near-ties, or a better item), and the others (violations)."""

    direction: str
    queries: int
    differing: int
    near_ties: int
    violations: int
    worst_gap: float  # largest PyTorch-score gap among the positions that differ
    ok: bool


@dataclass
class ParityReport:
    """Every check of one export against one PyTorch model."""

    model: str
    precision: str
    towers: list[TowerCheck] = field(default_factory=list)
    ranks: list[RankCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All tower and ranking checks passed."""
        return all(t.ok for t in self.towers) and all(r.ok for r in self.ranks)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record, gates included."""
        return {
            "model": self.model,
            "precision": self.precision,
            "ok": self.ok,
            "gate": dict(gates(self.precision)),
            "towers": [asdict(t) for t in self.towers],
            "ranks": [asdict(r) for r in self.ranks],
        }

    def metric_rows(self) -> list[dict[str, Any]]:
        """The checks as report rows (metric, measured, expected, tolerance, delta, ok, format), worst batch per tower."""
        g = gates(self.precision)
        rows = []
        for tower in ("image", "text"):
            mine = [t for t in self.towers if t.tower == tower]
            if not mine:
                continue
            if "max_abs_diff" in g:
                worst = max(t.max_abs_diff for t in mine)
                rows.append(
                    _row(f"{tower}_max_abs_diff", worst, 0.0, g["max_abs_diff"], all(t.ok for t in mine), ".1e")
                )
            else:
                worst = min(t.min_cosine for t in mine)
                rows.append(
                    _row(f"{tower}_min_cosine", worst, 1.0, 1.0 - g["min_cosine"], all(t.ok for t in mine), ".4f")
                )
        for r in self.ranks:
            short = "t2i" if r.direction.startswith("text") else "i2t"
            rows.append(_row(f"{short}_top{TOP_K}_violations", r.violations, 0, 0, r.ok, ".0f"))
        return rows

    def table(self) -> str:
        """Plain-text table of every check."""
        g = gates(self.precision)
        gate = f"max |d| <= {g['max_abs_diff']:g}" if "max_abs_diff" in g else f"min cos >= {g['min_cosine']}"
        lines = [
            f"{self.model} ({self.precision}): ONNX Runtime against PyTorch, normalised features; gate {gate}",
            f"{'tower':<6}{'batch':>6}{'max |d|':>12}{'min cos':>12}",
        ]
        for t in self.towers:
            lines.append(
                f"{t.tower:<6}{t.batch:>6}{t.max_abs_diff:>12.3e}{t.min_cosine:>12.7f}  {'ok' if t.ok else 'FAIL'}"
            )
        for r in self.ranks:
            lines.append(
                f"top-{TOP_K} {r.direction}: {r.queries} queries, {r.differing} positions differ: {r.near_ties} hold an "
                f"item within {g['tie']:g} of PyTorch's (a near-tie or better), {r.violations} not  {'ok' if r.ok else 'FAIL'}"
            )
        return "\n".join(lines)


def _row(metric: str, measured: float, expected: float, tolerance: float, ok: bool, fmt: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "measured": float(measured),
        "expected": float(expected),
        "tolerance": float(tolerance),
        "delta": float(measured) - float(expected),
        "ok": bool(ok),
        "format": fmt,
    }


def tower_check(tower: str, ours: torch.Tensor, ref: torch.Tensor, precision: str) -> TowerCheck:
    """Compare one batch of ONNX features with PyTorch's under the gate of ``precision``."""
    a, b = normalise(ours.cpu()), normalise(ref.cpu())
    if a.shape != b.shape:
        raise ExportError(f"{tower} features of shape {list(a.shape)} from ONNX Runtime, {list(b.shape)} from PyTorch")
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    cos = float((a * b).sum(-1).min()) if a.numel() else 1.0
    g = gates(precision)
    ok = diff <= g["max_abs_diff"] if "max_abs_diff" in g else cos >= g["min_cosine"]
    ok = ok and bool(torch.isfinite(a).all())
    return TowerCheck(tower, len(a), diff, cos, ok)


def rank_check(direction: str, ours: torch.Tensor, ref: torch.Tensor, tie: float, k: int = TOP_K) -> RankCheck:
    """Top-``k`` of each row of ``ours`` against ``ref`` (score matrices): position j may hold another item only
    when that item's PyTorch score is within ``tie`` of the score of PyTorch's own j-th item."""
    k = min(k, ref.shape[1])
    ref_top = ref.topk(k, dim=1)
    our_idx = ours.topk(k, dim=1).indices
    differ = our_idx != ref_top.indices
    gap = ref_top.values - ref.gather(1, our_idx)  # >= 0 up to rounding where the item differs
    near = differ & (gap <= tie)
    bad = differ & (gap > tie)
    worst = float(gap[differ].max()) if bool(differ.any()) else 0.0
    return RankCheck(
        direction, int(ref.shape[0]), int(differ.sum()), int(near.sum()), int(bad.sum()), worst, not bool(bad.any())
    )


@torch.inference_mode()
def compare(
    onnx_encoder: Any, torch_encoder: Any, precision: str, batches: Sequence[int] = BATCHES, model: str = "model"
) -> ParityReport:
    """ONNX Runtime against PyTorch on the same preprocessed images and token ids, per tower and batch size,
    and top-k rankings both ways on the largest batch."""
    images, captions = probe_inputs(max(batches))
    pixels = torch.stack([torch_encoder.preprocess(im) for im in images])
    tokens = torch_encoder.tokenize(captions)
    report = ParityReport(model, precision)
    feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for batch in batches:
        for tower, inputs, ours_fn, ref_fn in (
            ("image", pixels, onnx_encoder.encode_image, torch_encoder.encode_image),
            ("text", tokens, onnx_encoder.encode_text, torch_encoder.encode_text),
        ):
            ours, ref = ours_fn(inputs[:batch]), ref_fn(inputs[:batch])
            report.towers.append(tower_check(tower, ours, ref, precision))
            feats[tower] = (normalise(ours.cpu()), normalise(ref.cpu()))
    tie = float(gates(precision)["tie"])
    (oi, ri), (ot, rt) = feats["image"], feats["text"]
    report.ranks.append(rank_check("text-to-image", ot @ oi.T, rt @ ri.T, tie))
    report.ranks.append(rank_check("image-to-text", oi @ ot.T, ri @ rt.T, tie))
    return report
