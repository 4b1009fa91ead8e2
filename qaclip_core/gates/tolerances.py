"""The gates' tolerances, read from ``tolerances.yaml`` (numbers with the evidence behind them)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import QAClipError

if TYPE_CHECKING:  # pragma: no cover
    from .golden import GoldenTolerance
    from .parity import ParityTolerance

TOLERANCES = Path(__file__).with_name("tolerances.yaml")


@lru_cache(maxsize=None)
def _doc() -> dict:
    with open(TOLERANCES, encoding="utf-8") as f:
        return yaml.safe_load(f)


def parity_tolerance() -> "ParityTolerance":
    """The parity gate's tolerance."""
    from .parity import ParityTolerance

    raw = _doc()["parity"]
    return ParityTolerance(float(raw["max_abs"]), int(raw["top_k"]), float(raw["tie_gap"]), str(raw["why"]).strip())


def golden_tolerance(precision: str) -> "GoldenTolerance":
    """The golden gate's tolerance at ``precision`` (fp32, fp16, bf16)."""
    from .golden import GoldenTolerance

    table = _doc()["golden"]
    if precision not in table:
        raise QAClipError(f"{TOLERANCES}: no golden tolerance for precision {precision!r} (have {', '.join(table)})")
    raw = table[precision]
    return GoldenTolerance(precision, float(raw["max_abs"]), float(raw["min_cos"]), str(raw["why"]).strip())
