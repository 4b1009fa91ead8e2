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
    report_only: Optional[str] = None  # why this case is measured and shown but never gated

    @property
    def gated(self) -> bool:
        """Whether a value outside tolerance fails the case."""
        return self.report_only is None

    @property
    def id(self) -> str:
        """Test id ``<dataset>-<model>``."""
        return f"{self.dataset}-{self.model}"

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
    cases = []
    for model, entry in doc["models"].items():
        gate = entry.get("gate")
        report_only = entry.get("report_only")
        values = {k: {m: float(v) for m, v in vals.items()} for k, vals in entry.items() if k not in ("gate", "report_only")}
        if gate not in values:
            raise QAClipError(f"{path}: model {model!r} gate {gate!r} is not one of its sources {sorted(values)}")
        unknown = set(values) - set(doc["sources"])
        if unknown:
            raise QAClipError(f"{path}: model {model!r} cites undeclared sources {sorted(unknown)}")
        cases.append(ExpectedCase(doc["dataset"], model, doc["kind"], str(doc["split"]), gate, values,
                                  dict(doc["sources"]), tolerances, path,
                                  report_only=str(report_only).strip() if report_only else None))
    return cases


def load_expected(directory: Union[str, Path]) -> List[ExpectedCase]:
    """Every case of every YAML file in ``directory``, in file then model order."""
    cases: List[ExpectedCase] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        cases.extend(_parse(path))
    return cases
