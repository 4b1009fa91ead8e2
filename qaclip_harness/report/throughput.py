"""Throughput from pytest-benchmark JSON: per group, ours against the reference and the peer backends, and
against a baseline run when one is given.

A record's speed is its ``extra_info["items_per_s"]`` where the case counts items (images, texts,
photos), else calls per second (``1 / stats.mean``). Records are matched with a baseline by
``fullname``, as ``pytest --benchmark-compare`` matches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qaclip_core.errors import QAClipError

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


def load_benchmark_json(path: str | Path) -> dict:
    """A pytest-benchmark JSON file, checked for its shape (one clear error naming the file otherwise)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QAClipError(f"cannot read the benchmark file {path}: {e}") from None
    if not is_benchmark_json(doc):
        raise QAClipError(f"{path} is not pytest-benchmark JSON (expected 'machine_info' and a 'benchmarks' list)")
    return doc


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
