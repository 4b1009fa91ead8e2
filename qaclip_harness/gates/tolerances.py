"""The gates' tolerances, read from ``tolerances.yaml`` (numbers with the evidence behind them)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from qaclip_core.errors import QAClipError

TOLERANCES = Path(__file__).with_name("tolerances.yaml")


@dataclass(frozen=True)
class ParityTolerance:
    """The parity gate: max |delta| per component, top-k agreement up to near-ties."""

    max_abs: float
    top_k: int
    tie_gap: float
    why: str = ""


@dataclass(frozen=True)
class GoldenTolerance:
    """The golden gate at one precision."""

    precision: str
    max_abs: float
    min_cos: float
    why: str = ""


@dataclass(frozen=True)
class PrecisionTolerance:
    """A reduced-precision comparison with the reference in the same precision: max |delta| per component."""

    precision: str
    max_abs: float
    why: str = ""


@cache
def _doc() -> dict:
    with open(TOLERANCES, encoding="utf-8") as f:
        return yaml.safe_load(f)


def parity_tolerance() -> ParityTolerance:
    """The parity gate's tolerance."""
    raw = _doc()["parity"]
    return ParityTolerance(float(raw["max_abs"]), int(raw["top_k"]), float(raw["tie_gap"]), str(raw["why"]).strip())


def golden_tolerance(precision: str) -> GoldenTolerance:
    """The golden gate's tolerance at ``precision`` (fp32, fp16, bf16)."""
    table = _doc()["golden"]
    if precision not in table:
        raise QAClipError(f"{TOLERANCES}: no golden tolerance for precision {precision!r} (have {', '.join(table)})")
    raw = table[precision]
    return GoldenTolerance(precision, float(raw["max_abs"]), float(raw["min_cos"]), str(raw["why"]).strip())


def precision_tolerance(precision: str, model: str) -> PrecisionTolerance:
    """The ``reference_precision`` tolerance of ``model`` at ``precision`` (bf16, fp16): ours against the reference in that precision."""
    table = _doc().get("reference_precision") or {}
    if precision not in table:
        raise QAClipError(f"{TOLERANCES}: no reference_precision tolerance for {precision!r} (have {', '.join(table)})")
    raw = table[precision]
    if model not in raw["max_abs"]:
        raise QAClipError(
            f"{TOLERANCES}: reference_precision.{precision}.max_abs has no entry for {model!r} "
            f"(have {', '.join(raw['max_abs'])}): measure it as its why says"
        )
    return PrecisionTolerance(precision, float(raw["max_abs"][model]), str(raw["why"]).strip())


def reference_cpu_tolerance() -> PrecisionTolerance:
    """The fp32 tolerance of ours against the stored reference features when both ran on a CPU (``reference_cpu``)."""
    raw = _doc()["reference_cpu"]
    return PrecisionTolerance("fp32", float(raw["max_abs"]), str(raw["why"]).strip())
