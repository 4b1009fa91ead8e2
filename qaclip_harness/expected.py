"""Expected numbers (``expected/*.yaml``): published values, their sources and tolerances."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import read_yaml

METRIC_ORDER = {
    "retrieval": [
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_mean_recall",
        "i2t_mean_recall",
        "mean_recall",
    ],
    "zeroshot": ["top1", "top5", "true_prob"],
    "probabilities": [],  # one metric per label, in the file's order
    "parity": [
        "image_max_abs_diff",
        "text_max_abs_diff",
        "image_min_cosine",
        "text_min_cosine",
        "t2i_top5_violations",
        "i2t_top5_violations",
    ],
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
class Source:
    """Where published numbers come from, and (when known) the data build they were measured on."""

    cite: str
    build: str | None = None


@dataclass(frozen=True)
class DecisionsRef:
    """The reference's per-item decisions of a case (``decisions: {file, sha256}``, the file relative to the YAML)."""

    path: Path
    sha256: str
    key: str  # where the expected file names it (models.<model>.decisions)


CROSS_BUILD = "cross_build"  # tolerance group used when the data is not the gate source's build


@dataclass(frozen=True)
class GateDecision:
    """Which source a case is gated on for the data at hand, and why."""

    source: str
    build: str | None  # the data's build, when it could be told
    cross_build: bool  # the gate source was measured on another (or an unknown) build
    reason: str


@dataclass(frozen=True)
class ExpectedCase:
    """Published numbers of one (dataset, model) pair."""

    dataset: str
    model: str
    kind: str
    split: str
    gate: str
    values: dict[str, dict[str, float]]  # source -> metric -> value
    sources: dict[str, Source]
    tolerances: dict[str, dict[str, Tolerance]] = field(repr=False)  # precision -> metric or group -> tol
    path: Path | None = None
    report_only: str | None = None  # why this case is measured and shown but never gated
    # run settings the numbers were published for (e.g. backend: onnx, precision: fp16); empty: any
    requires: dict[str, str] = field(default_factory=dict)
    # metric -> items whose decision is a near-tie in the gate source (excused by name; the fixture's exact gates)
    near_ties: dict[str, list[str]] = field(default_factory=dict)
    # precision -> metric -> tolerance off the CPU (``tolerance_off_cpu``): the fixture's exact gates excuse the
    # near-ties of the measured CPU noise for the qaclip_core model run eagerly on the CPU (which reference-<model>
    # holds to that noise), and those of the wider parity bound for any other run (a GPU, ONNX, transformers, compile)
    off_cpu: dict[str, dict[str, Tolerance]] = field(default_factory=dict, repr=False)
    # the reference's decision for every item (qaclip_harness.gates.decisions); None: only totals exist
    decisions: DecisionsRef | None = None
    # the provenance block of numbers written by `qaclip record` (checkpoint sha256, data fingerprint, ...)
    recorded: dict[str, Any] = field(default_factory=dict, repr=False)

    def gate_for(self, build: str | None) -> GateDecision:
        """The gate source for data of ``build`` (None: unknown).

        A source measured on that very build gates (the declared gate first); otherwise the
        declared gate does, and if it names another build (or the data's build is unknown) the
        file's ``cross_build`` tolerance applies, where it defines one.
        """
        if self.measured_only:
            return GateDecision("", build, False, "measured only: no published value to gate on")
        if build is not None:
            same = [s for s in [self.gate, *self.values] if self.sources[s].build == build]
            if same:
                return GateDecision(same[0], build, False, f"{same[0]} was measured on this data build ({build})")
        declared = self.sources[self.gate].build
        if declared is None:
            return GateDecision(self.gate, build, False, "the declared gate (its data build is not named)")
        cross = any(CROSS_BUILD in table for table in self.tolerances.values())
        seen = f"this data is build {build}" if build else "this data's build could not be told"
        return GateDecision(self.gate, build, cross, f"the declared gate, measured on build {declared}; {seen}")

    measured_only: bool = False  # no published value: measured and shown, nothing to compare with

    @property
    def gated(self) -> bool:
        """Whether a value outside tolerance fails the case."""
        return self.report_only is None

    @property
    def id(self) -> str:
        """Test id ``<dataset>-<model>``, plus the required settings (``-onnx-fp16``) when there are any."""
        return "-".join([self.dataset, self.model, *self.requires.values()])

    @property
    def variant(self) -> str:
        """The required settings in words (``onnx fp16``), or ''."""
        return " ".join(self.requires.values())

    def unmet(self, settings: Mapping[str, str]) -> list[str]:
        """The required settings that ``settings`` (e.g. ``{"backend": ..., "precision": ...}``) does not meet, as ``--key value``."""
        return [f"--{k} {v}" for k, v in self.requires.items() if str(settings.get(k)) != v]

    @property
    def gate_values(self) -> dict[str, float]:
        """The metric values of the declared gate source (none for a measured-only case)."""
        return self.values[self.gate] if self.gate else {}

    def tolerance(
        self, metric: str, precision: str = "fp32", cross_build: bool = False, on_cpu: bool = True
    ) -> Tolerance:
        """Tolerance of ``metric`` at ``precision`` (exact metric key first, then its group).

        ``cross_build``: the data is not the gate source's build; the file's ``cross_build``
        tolerance applies where it is wider. ``on_cpu``: the qaclip_core model ran eagerly on the CPU;
        otherwise a model's ``tolerance_off_cpu`` entry for the metric comes first.
        """
        own = {} if on_cpu else self.off_cpu.get(precision, {})
        if metric in own:
            return own[metric]
        table = self.tolerances.get(precision)
        if table is None:
            raise QAClipError(f"{self.path}: no tolerance for precision {precision!r} (have {sorted(self.tolerances)})")
        for key in (metric, metric.split("_")[0]):
            if key in table:
                tol = table[key]
                wider = table.get(CROSS_BUILD) if cross_build else None
                return wider if wider is not None and wider.abs > tol.abs else tol
        raise QAClipError(f"{self.path}: no {precision} tolerance for metric {metric!r} or its group")

    def _keys(self, values: Mapping[str, float]) -> list[str]:
        order = METRIC_ORDER.get(self.kind, [])
        return sorted(values, key=lambda k: order.index(k) if k in order else len(order))

    def check(
        self,
        measured: Mapping[str, float],
        precision: str = "fp32",
        decision: GateDecision | None = None,
        on_cpu: bool = True,
    ) -> list[MetricCheck]:
        """Compare every metric of the gate source (``decision``'s, else the declared one) with ``measured``."""
        if self.measured_only:
            return []  # nothing published to compare with
        decision = decision or GateDecision(self.gate, None, False, "the declared gate")
        values = self.values[decision.source]
        keys = self._keys(values)
        missing = [k for k in keys if k not in measured]
        if missing:
            raise QAClipError(f"{self.id}: the evaluation did not produce metrics {missing}")
        return [
            MetricCheck(
                k, float(measured[k]), float(values[k]), self.tolerance(k, precision, decision.cross_build, on_cpu).abs
            )
            for k in keys
        ]

    def near_tie_note(self) -> str:
        """The excused near-tie items by metric, in words ('' when there are none)."""
        return "; ".join(f"{m}: {', '.join(items)}" for m, items in self.near_ties.items())

    def source_deltas(self, measured: Mapping[str, float]) -> dict[str, dict[str, dict[str, float]]]:
        """Every source's published value and the measured delta, per metric (the report shows them all)."""
        return {
            src: {
                k: {"expected": float(v), "delta": float(measured[k]) - float(v)}
                for k, v in vals.items()
                if k in measured
            }
            for src, vals in self.values.items()
        }


class ExpectedFileError(QAClipError, ValueError):
    """An expected file that does not follow the schema (the message names the file and the key)."""


_TOP_KEYS = ("dataset", "kind", "split", "sources", "tolerance", "models")  # and optionally: requires
_KINDS = tuple(METRIC_ORDER)


def _mapping(value: object, where: str, path: Path) -> dict:
    if not isinstance(value, dict) or not value:
        raise ExpectedFileError(
            f"{path}: {where} must be a non-empty mapping, got {type(value).__name__} {value!r:.60}"
        )
    return value


def _number(value: object, where: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpectedFileError(f"{path}: {where} must be a number, got {value!r:.60}")
    if not math.isfinite(value):
        raise ExpectedFileError(f"{path}: {where} must be a finite number, got {value!r:.60}")
    return float(value)


def _name(key: object, where: str, path: Path) -> str:
    """A key that names something (a model, source, precision, metric): one printable line, as a string."""
    text = str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else ""
    if not text or not text.isprintable() or text.strip() != text:
        raise ExpectedFileError(f"{path}: {where} holds the key {key!r:.60}, which is not a name (one printable line)")
    return text


def _text(value: object, where: str, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExpectedFileError(f"{path}: {where} must be a non-empty string, got {value!r:.60}")
    return value


def _read_yaml(path: Path) -> dict:
    doc = read_yaml(path, ExpectedFileError)  # strict: a key given twice, deep nesting, expanding aliases refused
    if doc is None:
        raise ExpectedFileError(f"{path}: is empty; expected the keys {', '.join(_TOP_KEYS)}")
    if not isinstance(doc, dict):
        raise ExpectedFileError(
            f"{path}: expected a mapping with the keys {', '.join(_TOP_KEYS)}, got {type(doc).__name__}"
        )
    return doc


_ENTRY_KEYS = ("gate", "report_only", "tolerance", "tolerance_off_cpu", "near_ties", "decisions")
REQUIREMENTS = ("backend", "precision")  # run settings an expected file may require


def _parse_sources(raw: object, path: Path) -> dict[str, Source]:
    """``id: citation`` or ``id: {cite: ..., build: <data build>}``."""
    out: dict[str, Source] = {}
    for key, raw_value in _mapping(raw, "sources", path).items():
        name = _name(key, "sources", path)
        if isinstance(raw_value, str):
            out[str(name)] = Source(raw_value)
            continue
        value = _mapping(raw_value, f"sources.{name}", path)
        unknown = set(value) - {"cite", "build"}
        if unknown or not isinstance(value.get("cite"), str) or not isinstance(value.get("build") or "", str):
            raise ExpectedFileError(
                f"{path}: sources.{name} must be a citation or {{cite: <text>, build: <data build>}}"
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        out[str(name)] = Source(value["cite"], str(value["build"]) if value.get("build") else None)
    return out


def _parse_tolerances(raw: object, path: Path, where: str = "tolerance") -> dict[str, dict[str, Tolerance]]:
    out: dict[str, dict[str, Tolerance]] = {}
    for prec_key, table in _mapping(raw, where, path).items():
        prec = _name(prec_key, where, path)
        out[str(prec)] = {}
        for key, raw_tol in _mapping(table, f"{where}.{prec}", path).items():
            name = _name(key, f"{where}.{prec}", path)
            where_tol = f"{where}.{prec}.{name}"
            tol = _mapping(raw_tol, where_tol, path)
            if "abs" not in tol or "why" not in tol:
                raise ExpectedFileError(
                    f"{path}: {where_tol} needs 'abs' (points) and 'why' (where the number comes from)"
                )
            value = _number(tol["abs"], f"{where_tol}.abs", path)
            if value < 0:
                raise ExpectedFileError(f"{path}: {where_tol}.abs must not be negative, got {value}")
            if not isinstance(tol["why"], str) or not tol["why"].strip():
                raise ExpectedFileError(f"{path}: {where_tol}.why must say where the number comes from (a string)")
            out[str(prec)][str(name)] = Tolerance(value, str(tol["why"]))
    return out


def _parse(path: Path) -> list[ExpectedCase]:
    doc = _read_yaml(path)
    missing = [k for k in _TOP_KEYS if k not in doc]
    if missing:
        raise ExpectedFileError(f"{path}: missing top-level key(s) {', '.join(repr(k) for k in missing)}")
    if doc["kind"] not in _KINDS:
        raise ExpectedFileError(f"{path}: kind must be one of {', '.join(_KINDS)}, got {doc['kind']!r:.60}")
    for key in ("dataset", "split"):
        _text(doc[key], key, path)
    sources = _parse_sources(doc["sources"], path)
    tolerances = _parse_tolerances(doc["tolerance"], path)
    requires = doc.get("requires") or {}
    if not isinstance(requires, dict) or not all(k in REQUIREMENTS and isinstance(v, str) for k, v in requires.items()):
        raise ExpectedFileError(
            f"{path}: requires must map run settings ({', '.join(REQUIREMENTS)}) to values "
            f"(e.g. backend: onnx), got {requires!r}"
        )
    cases = []
    for model_key, raw_entry in _mapping(doc["models"], "models", path).items():
        model = _name(model_key, "models", path)
        entry = _mapping(raw_entry, f"models.{model}", path)
        if "measured_only" in entry:
            cases.append(_measured_only_case(doc, str(model), entry, dict(sources), tolerances, path))
            continue
        gate = _text(entry.get("gate"), f"models.{model}.gate", path)
        report_only = entry.get("report_only")
        if report_only is not None and not isinstance(report_only, str):
            raise ExpectedFileError(
                f"{path}: models.{model}.report_only must say why (a string), got {report_only!r:.60}"
            )
        case_tolerances = tolerances
        if "tolerance" in entry:  # a model's own tolerances (its protocol is less certain), over the file's
            own = _parse_tolerances(entry["tolerance"], path, where=f"models.{model}.tolerance")
            case_tolerances = {p: {**tolerances.get(p, {}), **own.get(p, {})} for p in set(tolerances) | set(own)}
        values: dict[str, dict[str, float]] = {}
        for source_key, vals in entry.items():
            if source_key in _ENTRY_KEYS:
                continue
            source = _name(source_key, f"models.{model}", path)
            values[source] = {
                _name(m, f"models.{model}.{source}", path): _number(v, f"models.{model}.{source}.{m}", path)
                for m, v in _mapping(vals, f"models.{model}.{source}", path).items()
            }
        if gate not in values:
            raise ExpectedFileError(f"{path}: models.{model}.gate {gate!r} is not one of its sources {sorted(values)}")
        unknown = set(values) - set(sources)
        if unknown:
            raise ExpectedFileError(
                f"{path}: models.{model} cites undeclared sources {sorted(unknown)} (declare them under 'sources')"
            )
        off_cpu = (
            _parse_tolerances(entry["tolerance_off_cpu"], path, where=f"models.{model}.tolerance_off_cpu")
            if "tolerance_off_cpu" in entry
            else {}
        )
        near = entry.get("near_ties") or {}
        if not isinstance(near, dict) or not all(isinstance(v, list) for v in near.values()):
            raise ExpectedFileError(
                f"{path}: models.{model}.near_ties must map metrics to lists of items, got {near!r:.60}"
            )
        decisions = _parse_decisions(entry.get("decisions"), f"models.{model}.decisions", path)
        case = ExpectedCase(
            str(doc["dataset"]),
            str(model),
            str(doc["kind"]),
            str(doc["split"]),
            gate,
            values,
            dict(sources),
            case_tolerances,
            path,
            report_only=str(report_only).strip() if report_only else None,
            requires=dict(requires),
            near_ties={
                _name(k, f"models.{model}.near_ties", path): [
                    _name(i, f"models.{model}.near_ties.{k}", path) for i in v
                ]
                for k, v in near.items()
            },
            off_cpu=off_cpu,
            decisions=decisions,
            recorded=doc["recorded"] if isinstance(doc.get("recorded"), dict) else {},
        )
        for prec in case_tolerances:
            for metric in case.gate_values:
                try:
                    case.tolerance(metric, prec)
                except QAClipError:
                    raise ExpectedFileError(
                        f"{path}: models.{model}: no tolerance.{prec} entry for metric {metric!r} or its group "
                        f"{metric.split('_')[0]!r}"
                    ) from None
        cases.append(case)
    return cases


def _parse_decisions(raw: object, where: str, path: Path) -> DecisionsRef | None:
    """``decisions: {file: <path relative to the expected file>, sha256: <64 hex digits>}``, or absent."""
    if raw is None:
        return None
    ok = isinstance(raw, dict) and set(raw) == {"file", "sha256"} and isinstance(raw.get("file"), str)
    digest = str(raw.get("sha256", "")) if isinstance(raw, dict) else ""
    if not ok or not isinstance(raw, dict) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ExpectedFileError(
            f"{path}: {where} must be {{file: <reference-decisions file, relative to this file>, sha256: <64 hex "
            f"digits>}}, got {raw!r:.80}"
        )
    return DecisionsRef(path.parent / raw["file"], digest, where)


def check_against_catalog(cases: list[ExpectedCase]) -> None:
    """Each case's dataset has a card, and its split is the card's published split (else the numbers mean another split)."""
    from qaclip_harness.data.catalog import all_datasets

    cards = {c.name: c for c in all_datasets()}
    for case in cases:
        if case.kind not in ("retrieval", "zeroshot"):
            continue  # not an evaluation dataset (e.g. the README example's probabilities)
        card = cards.get(case.dataset)
        if card is None:
            raise ExpectedFileError(
                f"{case.path}: dataset {case.dataset!r} has no dataset card (known: {', '.join(cards)})"
            )
        if case.split != card.split:
            raise ExpectedFileError(
                f"{case.path}: split {case.split!r} is not the published split of {case.dataset} "
                f"({card.split!r}, cards/datasets.yaml): these numbers would gate another split"
            )
        builds = set(card.builds or {})
        for name, src in case.sources.items():
            if src.build is not None and src.build not in builds:
                raise ExpectedFileError(
                    f"{case.path}: sources.{name}.build {src.build!r} is not a build of {case.dataset} "
                    f"(known: {', '.join(sorted(builds)) or 'none'})"
                )


def _measured_only_case(
    doc: dict,
    model: str,
    entry: dict,
    sources: dict[str, Source],
    tolerances: dict[str, dict[str, Tolerance]],
    path: Path,
) -> ExpectedCase:
    """A model with no published value: ``measured_only: <why>`` and nothing else (reported, never gated)."""
    where = f"models.{model}"
    others = sorted(k for k in entry if k != "measured_only")
    if others:
        raise ExpectedFileError(
            f"{path}: {where} is measured_only, so it takes no gate or values; remove {others} "
            "(or drop measured_only and gate on a source)"
        )
    why = entry["measured_only"]
    if not isinstance(why, str) or not why.strip():
        raise ExpectedFileError(
            f"{path}: {where}.measured_only must say why there is no published value, got {why!r:.60}"
        )
    return ExpectedCase(
        str(doc["dataset"]),
        model,
        str(doc["kind"]),
        str(doc["split"]),
        "",
        {},
        sources,
        tolerances,
        path,
        report_only=f"measured only: {why.strip()}",
        measured_only=True,
    )


def load_expected(directory: str | Path) -> list[ExpectedCase]:
    """Every case of every YAML file in ``directory``, in file then model order, validated."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExpectedFileError(f"expected-numbers folder {directory} does not exist")
    return load_expected_paths([directory])


def load_expected_paths(paths: Sequence[str | Path]) -> list[ExpectedCase]:
    """Every case of ``paths`` (files, or folders whose ``*.yaml`` are read), in order, validated; a case id is defined once."""
    cases: list[ExpectedCase] = []
    seen: dict[str, Path] = {}
    for name in paths:
        given = Path(name)
        if not given.exists():
            raise ExpectedFileError(f"expected numbers {given} do not exist")
        for path in sorted(given.glob("*.yaml")) if given.is_dir() else [given]:
            for case in _parse(path):
                if case.id in seen:
                    raise ExpectedFileError(f"{path}: case {case.id} is also defined in {seen[case.id]}")
                seen[case.id] = path
                cases.append(case)
    return cases


def check_against_cards(cases: list[ExpectedCase]) -> None:
    """Each case's model has a card (a model named in an expected file but registered nowhere is a typo)."""
    from qaclip_core.errors import UnknownModelError
    from qaclip_core.registry import get_card

    for case in cases:
        try:
            get_card(case.model)
        except UnknownModelError:
            raise ExpectedFileError(
                f"{case.path}: models.{case.model}: no model card of that name (a built-in card, or one of the "
                "project's cards: [tool.qaclip] cards)"
            ) from None
