"""Expected numbers (``expected/*.yaml``): published values, their sources and tolerances."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import yaml

from .errors import QAClipError

METRIC_ORDER = {
    "retrieval": ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_mean_recall", "i2t_mean_recall", "mean_recall"],
    "zeroshot": ["top1", "top5"],
    "parity": ["image_max_abs_diff", "text_max_abs_diff", "image_min_cosine", "text_min_cosine",
               "t2i_top5_violations", "i2t_top5_violations"],
}


@dataclass(frozen=True)
class Tolerance:
    """Allowed absolute deviation in points, and why."""

    abs: float
    why: str


@dataclass(frozen=True)
class MetricCheck:
    """One metric of one case: measured against the gate value."""

    metric: str
    measured: float
    expected: float
    tolerance: float

    @property
    def delta(self) -> float:
        """measured - expected."""
        return self.measured - self.expected

    @property
    def ok(self) -> bool:
        """Within tolerance (a hair of float slack for values like 0.1 + 0.05)."""
        return abs(self.delta) <= self.tolerance + 1e-9


@dataclass(frozen=True)
class ExpectedCase:
    """Published numbers of one (dataset, model) pair."""

    dataset: str
    model: str
    kind: str
    split: str
    gate: str
    values: Dict[str, Dict[str, float]]  # source -> metric -> value
    sources: Dict[str, str]
    tolerances: Dict[str, Dict[str, Tolerance]] = field(repr=False)  # precision -> metric or group -> tol
    path: Optional[Path] = None
    # run settings the numbers were published for (e.g. backend: onnx, precision: fp16); empty: any
    requires: Dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Test id ``<dataset>-<model>``, plus the required settings (``-onnx-fp16``) when there are any."""
        return "-".join([self.dataset, self.model, *self.requires.values()])

    @property
    def variant(self) -> str:
        """The required settings in words (``onnx fp16``), or ''."""
        return " ".join(self.requires.values())

    def unmet(self, settings: Mapping[str, str]) -> List[str]:
        """The required settings that ``settings`` (e.g. ``{"backend": ..., "precision": ...}``) does not meet, as ``--key value``."""
        return [f"--{k} {v}" for k, v in self.requires.items() if str(settings.get(k)) != v]

    @property
    def gate_values(self) -> Dict[str, float]:
        """The metric values the test compares with."""
        return self.values[self.gate]

    def tolerance(self, metric: str, precision: str = "fp32") -> Tolerance:
        """Tolerance of ``metric`` at ``precision`` (exact metric key first, then its group)."""
        table = self.tolerances.get(precision)
        if table is None:
            raise QAClipError(f"{self.path}: no tolerance for precision {precision!r} (have {sorted(self.tolerances)})")
        for key in (metric, metric.split("_")[0]):
            if key in table:
                return table[key]
        raise QAClipError(f"{self.path}: no {precision} tolerance for metric {metric!r} or its group")

    def check(self, measured: Mapping[str, float], precision: str = "fp32") -> List[MetricCheck]:
        """Compare every gate metric with ``measured``."""
        order = METRIC_ORDER.get(self.kind, [])
        keys = sorted(self.gate_values, key=lambda k: order.index(k) if k in order else len(order))
        missing = [k for k in keys if k not in measured]
        if missing:
            raise QAClipError(f"{self.id}: the evaluation did not produce metrics {missing}")
        return [
            MetricCheck(k, float(measured[k]), float(self.gate_values[k]), self.tolerance(k, precision).abs)
            for k in keys
        ]


def _parse(path: Path) -> List[ExpectedCase]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    for key in ("dataset", "kind", "split", "sources", "tolerance", "models"):
        if key not in doc:
            raise QAClipError(f"{path}: missing top-level key {key!r}")
    tolerances = {
        prec: {name: Tolerance(float(t["abs"]), str(t["why"])) for name, t in table.items()}
        for prec, table in doc["tolerance"].items()
    }
    requires = doc.get("requires") or {}
    if not isinstance(requires, dict) or not all(isinstance(v, str) for v in requires.values()):
        raise QAClipError(f"{path}: 'requires' must map settings to values (e.g. backend: onnx), got {requires!r}")
    cases = []
    for model, entry in doc["models"].items():
        gate = entry.get("gate")
        values = {k: {m: float(v) for m, v in vals.items()} for k, vals in entry.items() if k != "gate"}
        if gate not in values:
            raise QAClipError(f"{path}: model {model!r} gate {gate!r} is not one of its sources {sorted(values)}")
        unknown = set(values) - set(doc["sources"])
        if unknown:
            raise QAClipError(f"{path}: model {model!r} cites undeclared sources {sorted(unknown)}")
        cases.append(ExpectedCase(doc["dataset"], model, doc["kind"], str(doc["split"]), gate, values,
                                  dict(doc["sources"]), tolerances, path, dict(requires)))
    return cases


def load_expected(directory: Union[str, Path]) -> List[ExpectedCase]:
    """Every case of every YAML file in ``directory``, in file then model order."""
    cases: List[ExpectedCase] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        cases.extend(_parse(path))
    return cases
