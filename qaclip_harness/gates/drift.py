"""Comparing two sets of probe features: drift per tower, ranking agreement, and their tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TOWERS = ("image", "text")


@dataclass(frozen=True)
class TowerDrift:
    """How far one tower's normalised features moved between two runs."""

    tower: str
    max_abs: float  # largest |a - b| over every item and component
    min_cos: float  # smallest cosine between an item's two feature vectors
    worst: str  # the item holding max_abs
    items: int

    def row(self) -> str:
        """One line of the drift table."""
        return f"{self.tower:<6}{self.max_abs:>12.3e}{self.min_cos:>14.9f}  {self.worst}"


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: Sequence[str], what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} features have different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() != 2 or len(names) != a.shape[0]:
        raise ValueError(f"{what} features must be [N, D] with one name per row: {tuple(a.shape)}, {len(names)} names")
    for name, x in (("first", a), ("second", b)):
        if not torch.isfinite(x).all():
            bad = names[int((~torch.isfinite(x)).any(dim=1).nonzero()[0])]
            raise ValueError(f"{what} features of the {name} run contain NaN or inf (first at item {bad!r})")


def tower_drift(tower: str, a: torch.Tensor, b: torch.Tensor, names: Sequence[str]) -> TowerDrift:
    """Max |a - b|, min cosine and the worst item between two [N, D] feature matrices of one tower."""
    a, b = a.double(), b.double()
    _check_pair(a, b, names, tower)
    per_item = (a - b).abs().amax(dim=1)
    cos = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    worst = int(per_item.argmax())
    return TowerDrift(tower, float(per_item[worst]), float(cos.min()), str(names[worst]), len(names))


@dataclass(frozen=True)
class RankMismatch:
    """A query whose top k differs between the runs beyond near-ties."""

    direction: str  # t2i: a caption ranks the images; i2t: an image ranks the captions
    query: str
    expected: list[str]
    got: list[str]
    gap: float  # the largest expected-score difference among the swapped keys


def ranking_mismatches(
    expected_scores: torch.Tensor,
    got_scores: torch.Tensor,
    k: int,
    tie_gap: float,
    queries: Sequence[str],
    keys: Sequence[str],
    direction: str,
) -> list[RankMismatch]:
    """Queries whose top ``k`` keys differ, excusing swaps of keys whose expected scores differ by less than ``tie_gap``.

    Rows are queries, columns keys. At every rank where the two top-k lists hold different
    keys, the swap is a near-tie when the *expected* run scored those two keys within
    ``tie_gap``: float noise may legitimately order them either way.
    """
    k = min(k, expected_scores.shape[1])
    exp = expected_scores.double()
    exp_top = torch.sort(exp, dim=1, descending=True, stable=True).indices[:, :k]
    got_top = torch.sort(got_scores.double(), dim=1, descending=True, stable=True).indices[:, :k]
    out = []
    for row in (exp_top != got_top).any(dim=1).nonzero().flatten().tolist():
        e, g = exp_top[row], got_top[row]
        gaps = [(exp[row, e[r]] - exp[row, g[r]]).abs().item() for r in range(k) if e[r] != g[r]]
        if max(gaps) >= tie_gap:
            out.append(
                RankMismatch(
                    direction,
                    str(queries[row]),
                    [str(keys[i]) for i in e.tolist()],
                    [str(keys[i]) for i in g.tolist()],
                    max(gaps),
                )
            )
    return out


def near_tie_rows(expected_scores: torch.Tensor, got_scores: torch.Tensor, k: int, tie_gap: float) -> int:
    """How many rows' top ``k`` differ only by near-ties (reported, not failed)."""
    k = min(k, expected_scores.shape[1])
    exp_top = torch.sort(expected_scores.double(), dim=1, descending=True, stable=True).indices[:, :k]
    got_top = torch.sort(got_scores.double(), dim=1, descending=True, stable=True).indices[:, :k]
    return int((exp_top != got_top).any(dim=1).sum())


def top1_agreement(reference: torch.Tensor, current: torch.Tensor) -> int:
    """How many rows have the same best key in both score matrices."""
    return int((reference.argmax(dim=1) == current.argmax(dim=1)).sum())


def drift_table(
    drifts: dict[str, TowerDrift], limits: dict[str, str], extra: dict[str, Sequence[str]] | None = None
) -> str:
    """Plain-text table: one row per tower with max |delta|, min cosine, worst item and the limits."""
    extra = extra or {}
    head = f"{'tower':<6}{'max |Δ|':>12}{'min cosine':>14}  worst item"
    lines = [head]
    for tower, d in drifts.items():
        cells = "".join(f"  {c}" for c in extra.get(tower, ()))
        lines.append(d.row() + cells + (f"  [{limits[tower]}]" if tower in limits else ""))
    return "\n".join(lines)


def mismatch_lines(mismatches: Sequence[RankMismatch], limit: int = 6) -> list[str]:
    """Human-readable lines for the first ``limit`` ranking mismatches."""
    lines = []
    for m in mismatches[:limit]:
        lines.append(f"  {m.direction} {m.query}: expected {m.expected}, got {m.got} (score gap {m.gap:.2e})")
    if len(mismatches) > limit:
        lines.append(f"  ... and {len(mismatches) - limit} more")
    return lines
