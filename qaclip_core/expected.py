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
    measured_only: bool = False  # no published value: measured and shown, nothing to compare with

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
        """The metric values the test compares with (none for a measured-only case)."""
        return self.values[self.gate] if self.gate else {}

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


class ExpectedFileError(QAClipError, ValueError):
    """An expected file that does not follow the schema (the message names the file and the key)."""


_TOP_KEYS = ("dataset", "kind", "split", "sources", "tolerance", "models")
_KINDS = tuple(METRIC_ORDER)


def _mapping(value: object, where: str, path: Path) -> dict:
    if not isinstance(value, dict) or not value:
        raise ExpectedFileError(f"{path}: {where} must be a non-empty mapping, got {type(value).__name__} {value!r:.60}")
    return value


def _number(value: object, where: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpectedFileError(f"{path}: {where} must be a number, got {value!r:.60}")
    return float(value)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExpectedFileError(f"{path}: cannot be read ({e})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ExpectedFileError(f"{path}: is not valid YAML{where}: {problem}") from None
    if doc is None:
        raise ExpectedFileError(f"{path}: is empty; expected the keys {', '.join(_TOP_KEYS)}")
    if not isinstance(doc, dict):
        raise ExpectedFileError(f"{path}: expected a mapping with the keys {', '.join(_TOP_KEYS)}, got {type(doc).__name__}")
    return doc


def _parse_tolerances(raw: object, path: Path) -> Dict[str, Dict[str, Tolerance]]:
    out: Dict[str, Dict[str, Tolerance]] = {}
    for prec, table in _mapping(raw, "tolerance", path).items():
        out[str(prec)] = {}
        for name, tol in _mapping(table, f"tolerance.{prec}", path).items():
            where = f"tolerance.{prec}.{name}"
            tol = _mapping(tol, where, path)
            if "abs" not in tol or "why" not in tol:
                raise ExpectedFileError(f"{path}: {where} needs 'abs' (points) and 'why' (where the number comes from)")
            value = _number(tol["abs"], f"{where}.abs", path)
            if value < 0:
                raise ExpectedFileError(f"{path}: {where}.abs must not be negative, got {value}")
            if not str(tol["why"]).strip():
                raise ExpectedFileError(f"{path}: {where}.why is empty: a tolerance needs its reason")
            out[str(prec)][str(name)] = Tolerance(value, str(tol["why"]))
    return out


def _parse(path: Path) -> List[ExpectedCase]:
    doc = _read_yaml(path)
    missing = [k for k in _TOP_KEYS if k not in doc]
    if missing:
        raise ExpectedFileError(f"{path}: missing top-level key(s) {', '.join(repr(k) for k in missing)}")
    if doc["kind"] not in _KINDS:
        raise ExpectedFileError(f"{path}: kind must be one of {', '.join(_KINDS)}, got {doc['kind']!r}")
    sources = _mapping(doc["sources"], "sources", path)
    tolerances = _parse_tolerances(doc["tolerance"], path)
    cases = []
    for model, entry in _mapping(doc["models"], "models", path).items():
        entry = _mapping(entry, f"models.{model}", path)
        if "measured_only" in entry:
            cases.append(_measured_only_case(doc, str(model), entry, dict(sources), tolerances, path))
            continue
        gate = entry.get("gate")
        report_only = entry.get("report_only")
        values: Dict[str, Dict[str, float]] = {}
        for source, vals in entry.items():
            if source in ("gate", "report_only"):
                continue
            values[source] = {str(m): _number(v, f"models.{model}.{source}.{m}", path)
                              for m, v in _mapping(vals, f"models.{model}.{source}", path).items()}
        if gate not in values:
            raise ExpectedFileError(f"{path}: models.{model}.gate {gate!r} is not one of its sources {sorted(values)}")
        unknown = set(values) - set(sources)
        if unknown:
            raise ExpectedFileError(f"{path}: models.{model} cites undeclared sources {sorted(unknown)} (declare them under 'sources')")
        case = ExpectedCase(str(doc["dataset"]), str(model), str(doc["kind"]), str(doc["split"]), gate, values,
                            dict(sources), tolerances, path,
                            report_only=str(report_only).strip() if report_only else None)
        for prec in tolerances:
            for metric in case.gate_values:
                try:
                    case.tolerance(metric, prec)
                except QAClipError:
                    raise ExpectedFileError(
                        f"{path}: models.{model}: no tolerance.{prec} entry for metric {metric!r} or its group "
                        f"{metric.split('_')[0]!r}") from None
        cases.append(case)
    return cases


def _measured_only_case(doc: dict, model: str, entry: dict, sources: Dict[str, str],
                        tolerances: Dict[str, Dict[str, Tolerance]], path: Path) -> ExpectedCase:
    """A model with no published value: ``measured_only: <why>`` and nothing else (reported, never gated)."""
    where = f"models.{model}"
    others = sorted(k for k in entry if k != "measured_only")
    if others:
        raise ExpectedFileError(f"{path}: {where} is measured_only, so it takes no gate or values; remove {others} "
                                "(or drop measured_only and gate on a source)")
    why = entry["measured_only"]
    if not isinstance(why, str) or not why.strip():
        raise ExpectedFileError(f"{path}: {where}.measured_only must say why there is no published value, got {why!r:.60}")
    return ExpectedCase(str(doc["dataset"]), model, str(doc["kind"]), str(doc["split"]), "", {}, sources, tolerances,
                        path, report_only=f"measured only: {why.strip()}", measured_only=True)


def load_expected(directory: Union[str, Path]) -> List[ExpectedCase]:
    """Every case of every YAML file in ``directory``, in file then model order, validated."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExpectedFileError(f"expected-numbers folder {directory} does not exist")
    cases: List[ExpectedCase] = []
    seen: Dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        for case in _parse(path):
            if case.id in seen:
                raise ExpectedFileError(f"{path}: case {case.id} is also defined in {seen[case.id]}")
            seen[case.id] = path
            cases.append(case)
    return cases
