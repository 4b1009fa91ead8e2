"""``parity-<model>``: our model against the reference implementation on the same checkpoint and probe set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qaclip_harness.gates.drift import (
    TOWERS,
    RankMismatch,
    TowerDrift,
    drift_table,
    mismatch_lines,
    near_tie_rows,
    ranking_mismatches,
    tower_drift,
)
from qaclip_harness.gates.features import FeatureSource, ProbeFeatures, probe_features, tf32
from qaclip_harness.gates.tolerances import ParityTolerance, parity_tolerance
from qaclip_harness.probe import ProbeSet


@dataclass
class ParityReport:
    """The comparison of our probe features with the reference's."""

    drifts: dict[str, TowerDrift]
    mismatches: list[RankMismatch]
    near_ties: int  # queries whose top-k differs only by near-ties
    tolerance: ParityTolerance
    tf32_drifts: dict[str, TowerDrift] | None = None  # ours with TF32 on against the strict reference (CUDA only)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every tower within max_abs and no ranking mismatch beyond near-ties."""
        return all(d.max_abs <= self.tolerance.max_abs for d in self.drifts.values()) and not self.mismatches

    def table(self) -> str:
        """The per-tower table (max |delta|, min cosine, worst item) and the ranking mismatches."""
        limits = {
            t: f"max |Δ| <= {self.tolerance.max_abs:.0e}" + (" FAIL" if d.max_abs > self.tolerance.max_abs else "")
            for t, d in self.drifts.items()
        }
        lines = [drift_table(self.drifts, limits)]
        k = self.tolerance.top_k
        if self.mismatches:
            lines.append(
                f"top-{k} differs beyond near-ties (score gap >= {self.tolerance.tie_gap:.0e}) "
                f"for {len(self.mismatches)} queries:"
            )
            lines += mismatch_lines(self.mismatches)
        else:
            lines.append(
                f"top-{k} text-to-image and image-to-text: same ({self.near_ties} queries differ by near-ties only)"
            )
        if self.tf32_drifts:
            lines.append(
                "both sides with TF32 on (not gated): "
                + ", ".join(
                    f"{t} max |Δ| {d.max_abs:.2e}, min cos {d.min_cos:.9f}" for t, d in self.tf32_drifts.items()
                )
            )
        lines += self.notes
        return "\n".join(lines)

    def measured(self) -> dict[str, float]:
        """Flat numbers for the report: per tower max |delta| and min cosine, mismatch counts."""
        out: dict[str, float] = {}
        for t, d in self.drifts.items():
            out[f"{t}_max_abs"] = d.max_abs
            out[f"{t}_min_cos"] = d.min_cos
        out["topk_mismatches"] = float(len(self.mismatches))
        out["topk_near_ties"] = float(self.near_ties)
        for t, d in (self.tf32_drifts or {}).items():
            out[f"tf32_{t}_max_abs"] = d.max_abs
        return out


def default_tolerance() -> ParityTolerance:
    """The parity tolerance of ``tolerances.yaml``."""
    return parity_tolerance()


def compare_parity(
    ours: ProbeFeatures, reference: ProbeFeatures, tolerance: ParityTolerance | None = None
) -> ParityReport:
    """Drift per tower and ranking agreement of ``ours`` against ``reference``."""
    tol = tolerance or default_tolerance()
    drifts = {t: tower_drift(t, ours.tower(t)[0], reference.tower(t)[0], reference.tower(t)[1]) for t in TOWERS}
    ref_scores, our_scores = reference.scores(), ours.scores()
    captions, images = reference.tower("text")[1], reference.image_names
    mismatches = ranking_mismatches(
        ref_scores, our_scores, tol.top_k, tol.tie_gap, captions, images, "t2i"
    ) + ranking_mismatches(ref_scores.t(), our_scores.t(), tol.top_k, tol.tie_gap, images, captions, "i2t")
    differing = near_tie_rows(ref_scores, our_scores, tol.top_k, tol.tie_gap) + near_tie_rows(
        ref_scores.t(), our_scores.t(), tol.top_k, tol.tie_gap
    )
    return ParityReport(drifts, mismatches, differing - len(mismatches), tol)


def strict_and_tf32(source: FeatureSource, probe: ProbeSet, cuda: bool) -> tuple[ProbeFeatures, ProbeFeatures | None]:
    """Probe features with TF32 off, and (on CUDA) with TF32 on."""
    with tf32(False):
        strict = probe_features(source, probe)
    if not cuda:
        return strict, None
    with tf32(True):
        return strict, probe_features(source, probe)


def run_parity(
    ours: tuple[ProbeFeatures, ProbeFeatures | None],
    reference: tuple[ProbeFeatures, ProbeFeatures | None],
    tolerance: ParityTolerance | None = None,
) -> ParityReport:
    """The parity report from (TF32 off, TF32 on) features of both sides; the gate reads the TF32-off pair."""
    report = compare_parity(ours[0], reference[0], tolerance)
    if ours[1] is not None and reference[1] is not None:
        report.tf32_drifts = {
            t: tower_drift(t, ours[1].tower(t)[0], reference[1].tower(t)[0], reference[0].tower(t)[1]) for t in TOWERS
        }
        moved = {t: tower_drift(t, ours[1].tower(t)[0], ours[0].tower(t)[0], ours[0].tower(t)[1]) for t in TOWERS}
        report.notes.append(
            "TF32 on against TF32 off, ours: " + ", ".join(f"{t} max |Δ| {d.max_abs:.2e}" for t, d in moved.items())
        )
    return report


def on_cuda(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA device (TF32 applies)."""
    return torch.device(device).type == "cuda"
