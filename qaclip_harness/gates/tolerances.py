"""The gates' tolerances, read from ``tolerances.yaml`` (numbers with the evidence behind them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import key_text, read_yaml

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


class ToleranceFileError(QAClipError, ValueError):
    """A tolerances file that cannot be read or does not follow its format (the message names the file and key)."""


def _number(table: dict, key: str, where: str, path: Path, minimum: float = 0.0) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ToleranceFileError(
            f"{path}: {where}.{key_text(key)} must be a finite number >= {minimum:g}, got {value!r:.60}"
        )
    return float(value)


def _table(doc: dict, key: str, where: str, path: Path) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict) or not value:
        raise ToleranceFileError(
            f"{path}: {where}{key_text(key)} must be a non-empty mapping, got {type(value).__name__}"
        )
    return value


def _why(table: dict, where: str, path: Path) -> None:
    if not isinstance(table.get("why"), str) or not table["why"].strip():
        raise ToleranceFileError(f"{path}: {where}.why must say where the number comes from")


def load_tolerances(path: str | Path) -> dict:
    """A tolerances file, read strictly and checked: every number the gates use, finite, with its why."""
    path = Path(path)
    doc = read_yaml(path, ToleranceFileError)
    if not isinstance(doc, dict):
        raise ToleranceFileError(
            f"{path}: expected a mapping (parity, golden, reference_cpu, ...), got {type(doc).__name__}"
        )
    parity = _table(doc, "parity", "", path)
    for key in ("max_abs", "tie_gap"):
        _number(parity, key, "parity", path)
    top_k = parity.get("top_k")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ToleranceFileError(f"{path}: parity.top_k must be a positive integer, got {top_k!r:.60}")
    _why(parity, "parity", path)
    for precision, raw in _table(doc, "golden", "", path).items():
        where = f"golden.{key_text(precision)}"
        table = _table({precision: raw}, precision, "golden.", path)
        _number(table, "max_abs", where, path)
        _number(table, "min_cos", where, path, minimum=-1.0)
        _why(table, where, path)
    cpu = _table(doc, "reference_cpu", "", path)
    _number(cpu, "max_abs", "reference_cpu", path)
    _why(cpu, "reference_cpu", path)
    if "reference_precision" in doc:  # optional: the reference-<model> gates in bf16 and fp16
        for precision, raw in _table(doc, "reference_precision", "", path).items():
            where = f"reference_precision.{key_text(precision)}"
            table = _table({precision: raw}, precision, "reference_precision.", path)
            for model in _table(table, "max_abs", f"{where}.", path):
                _number(table["max_abs"], model, f"{where}.max_abs", path)
            _why(table, where, path)
    return doc


@cache
def _doc() -> dict:
    return load_tolerances(TOLERANCES)


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
