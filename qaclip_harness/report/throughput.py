"""Throughput from pytest-benchmark JSON: per group, ours against the reference and the peer backends, and
against a baseline run when one is given.

A record's speed is its ``extra_info["items_per_s"]`` where the case counts items (images, texts,
photos), else calls per second (``1 / stats.mean``). Records are matched with a baseline by
``fullname``, as ``pytest --benchmark-compare`` matches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import read_json

OURS = "qaclip_core"
REFERENCE = "cn_clip"


@dataclass(frozen=True)
class Record:
    """One pytest-benchmark record: its group, test name, implementation and speed."""

    group: str
    fullname: str
    impl: str
    per_s: float
    unit: str  # items/s or calls/s

    @property
    def role(self) -> str:
        """``ours``, ``reference`` or ``peer`` (another backend, a library baseline)."""
        if self.impl.startswith(OURS):
            return "ours"
        return "reference" if self.impl.startswith(REFERENCE) else "peer"


def is_benchmark_json(doc: object) -> bool:
    """Whether ``doc`` looks like a pytest-benchmark JSON document."""
    return isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list) and "machine_info" in doc


class BenchmarkFileError(QAClipError, ValueError):
    """A pytest-benchmark JSON file that cannot be read or holds a value of the wrong kind (file and key named)."""


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_benchmark_json(doc: object, path: str | Path) -> dict:
    """``doc`` if it is pytest-benchmark JSON whose every value used here has its kind, else BenchmarkFileError."""
    if not is_benchmark_json(doc):
        raise BenchmarkFileError(
            f"{path} is not pytest-benchmark JSON (expected 'machine_info' and a 'benchmarks' list)"
        )
    assert isinstance(doc, dict)
    if not isinstance(doc.get("commit_info") or {}, dict) or not isinstance(doc.get("datetime") or "", str):
        raise BenchmarkFileError(f"{path}: commit_info must be a mapping and datetime a string")
    for i, bench in enumerate(doc["benchmarks"]):
        where = f"{path}: benchmarks[{i}]"
        if not isinstance(bench, dict):
            raise BenchmarkFileError(f"{where} must be a mapping, got {type(bench).__name__}")
        for key in ("group", "name", "fullname"):
            if not isinstance(bench.get(key) or "", str):
                raise BenchmarkFileError(f"{where}.{key} must be a string, got {bench[key]!r:.60}")
        stats, info = bench.get("stats") or {}, bench.get("extra_info") or {}
        if not isinstance(stats, dict) or not isinstance(info, dict):
            raise BenchmarkFileError(f"{where}: stats and extra_info must be mappings")
        for table, key, name in (
            (stats, "mean", "stats"),
            (info, "items_per_s", "extra_info"),
            (info, "reference_seconds_scaled", "extra_info"),
        ):
            if table.get(key) not in (None, 0) and not _positive(table[key]):
                raise BenchmarkFileError(f"{where}.{name}.{key} must be a positive number, got {table[key]!r:.60}")
        for key in ("impl", "workers"):
            if isinstance(info.get(key), (dict, list)):
                raise BenchmarkFileError(f"{where}.extra_info.{key} must be a name or a number, got {info[key]!r:.60}")
    return doc


def load_benchmark_json(path: str | Path) -> dict:
    """A pytest-benchmark JSON file, checked for its shape (one clear error naming the file otherwise)."""
    return check_benchmark_json(read_json(path, BenchmarkFileError), path)


def records(doc: dict) -> list[Record]:
    """Every record of a pytest-benchmark document; a reference timed on a sample and scaled is its own record."""
    out = []
    for bench in doc.get("benchmarks") or []:
        info = bench.get("extra_info") or {}
        stats = bench.get("stats") or {}
        group = bench.get("group") or bench.get("name", "")
        fullname = bench.get("fullname") or bench.get("name", "")
        impl = str(info.get("impl") or OURS)
        if "workers" in info:
            impl = f"{impl} w{info['workers']}"
        if info.get("items_per_s"):
            out.append(Record(group, fullname, impl, float(info["items_per_s"]), "items/s"))
        elif stats.get("mean"):
            out.append(Record(group, fullname, impl, 1.0 / float(stats["mean"]), "calls/s"))
        if info.get("reference_seconds_scaled"):
            out.append(
                Record(
                    group,
                    f"{fullname} [reference, scaled]",
                    f"{REFERENCE} (sampled, scaled)",
                    1.0 / float(info["reference_seconds_scaled"]),
                    "calls/s",
                )
            )
    return out


@dataclass
class Group:
    """The records of one benchmark group, with the baseline's speed of each where one was compared."""

    name: str
    records: list[Record]
    baseline: dict[str, float]  # fullname -> per_s in the baseline run

    def ratios(self) -> list[tuple]:
        """(label, ratio): each of ours over every reference and peer, and each record over its baseline."""
        ours = [r for r in self.records if r.role == "ours"]
        others = [r for r in self.records if r.role != "ours"]
        out = [(f"{a.impl} / {b.impl}", a.per_s / b.per_s) for a in ours for b in others if b.per_s]
        out += [
            (f"{r.impl} / baseline", r.per_s / self.baseline[r.fullname])
            for r in self.records
            if self.baseline.get(r.fullname)
        ]
        return out


def groups(doc: dict, baseline: dict | None = None) -> list[Group]:
    """The document's records by group (in first-seen order), each with its baseline speeds."""
    base = {r.fullname: r.per_s for r in records(baseline)} if baseline else {}
    by: dict[str, list[Record]] = {}
    for r in records(doc):
        by.setdefault(r.group, []).append(r)
    return [
        Group(name, recs, {r.fullname: base[r.fullname] for r in recs if r.fullname in base})
        for name, recs in by.items()
    ]
