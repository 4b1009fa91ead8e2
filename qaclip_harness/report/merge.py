"""``qaclip merge-reports``: one report from the ``--report`` folders of a sweep's shards (``--shard K/N``).

Each shard's report.json records its K/N and the case names of the whole selection
(``meta.shard``). The merge is refused, one line per problem naming the cases or folders, when
the shards do not make up that selection exactly once: a case that ran twice, a case of the
selection that ran nowhere, shards of different selections, shard counts, commits or tolerance
files. Otherwise it writes report.json and report.md (:func:`~.tables.write_reports`),
report.html (:func:`~.html.write_html`, with the throughput records), the shards' JUnit XML as one
file, and the pytest-benchmark records merged by machine (one JSON per machine: a machine's
records are compared with each other, never with another machine's).
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qaclip_core.errors import QAClipError
from qaclip_harness.files import atomic_write_text
from qaclip_harness.report.diff import load_report
from qaclip_harness.report.tables import CaseResult, write_reports
from qaclip_harness.report.throughput import is_benchmark_json

SHOWN = 8  # case names a refusal lists before "and N more"


class MergeError(QAClipError):
    """Shards that cannot be merged: ``lines`` holds one line per problem."""

    def __init__(self, lines: Sequence[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def case_name(ident: dict) -> str:
    """A case's name in a report: ``<dataset>-<model>``, and `` [<variant>]`` for a variant's table."""
    name = f"{ident['dataset']}-{ident['model']}"
    return f"{name} [{ident['variant']}]" if ident.get("variant") else name


@dataclass
class ShardRun:
    """One shard's --report folder, read."""

    folder: Path
    doc: dict
    benchmarks: list[tuple[Path, dict]] = field(default_factory=list)
    junit: list[Path] = field(default_factory=list)

    @property
    def shard(self) -> dict:
        """The shard record (meta.shard)."""
        return self.doc["meta"]["shard"]

    @property
    def label(self) -> str:
        """``<folder> (K/N)``."""
        return f"{self.folder} ({self.shard['index']}/{self.shard['count']})"

    @property
    def commit(self) -> str:
        """The commit the shard ran (with ``+dirty`` for uncommitted changes), or ``unknown``."""
        git = (self.doc.get("environment") or {}).get("git") or {}
        return f"{git.get('commit') or 'unknown'}{'+dirty' if git.get('dirty') else ''}"


def _listed(names: Collection[str]) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - SHOWN} more" if len(ordered) > SHOWN else ""
    return ", ".join(ordered[:SHOWN]) + more


def _is_junit(path: Path) -> bool:
    try:
        return ET.parse(path).getroot().tag in ("testsuites", "testsuite")
    except (OSError, ET.ParseError):
        return False


def read_shard(folder: str | Path) -> ShardRun:
    """A shard's folder: its report.json (with meta.shard), pytest-benchmark JSON and JUnit XML files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MergeError([f"{folder}: no such folder (a shard's --report folder)"])
    doc = load_report(folder)
    shard = (doc.get("meta") or {}).get("shard")
    if not isinstance(shard, dict) or not {"index", "count", "selection"} <= set(shard):
        raise MergeError(
            [f"{folder / 'report.json'}: no meta.shard record: not a shard's report (run each shard with --shard K/N)"]
        )
    run = ShardRun(folder, doc)
    for path in sorted(folder.glob("*.json")):
        if path.name == "report.json":
            continue
        try:
            bench = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not ours to judge: only pytest-benchmark documents are merged
        if is_benchmark_json(bench):
            run.benchmarks.append((path, bench))
    run.junit = [p for p in sorted(folder.glob("*.xml")) if _is_junit(p)]
    return run


def problems(runs: Sequence[ShardRun]) -> list[str]:
    """Every reason the shards are not one selection run exactly once (empty: they can be merged)."""
    out: list[str] = []
    first = runs[0]
    for what, value in (
        ("shard counts", lambda r: str(r.shard["count"])),
        ("selections", lambda r: r.shard.get("selection_sha256") or json.dumps(sorted(r.shard["selection"]))),
        ("commits", lambda r: r.commit),
        ("tolerance files (expected_sha256)", lambda r: str(r.shard.get("expected_sha256"))),
    ):
        odd = [r for r in runs if value(r) != value(first)]
        if not odd:
            continue
        if what == "selections":
            mine, theirs = set(first.shard["selection"]), set(odd[0].shard["selection"])
            detail = f"only in {first.folder}: {_listed(mine - theirs) or 'none'}; "
            detail += f"only in {odd[0].folder}: {_listed(theirs - mine) or 'none'}"
        elif what == "commits":
            detail = ", ".join(f"{r.folder} at {r.commit}" for r in runs)
        else:
            detail = ", ".join(f"{r.folder}: {value(r)[:16]}" for r in runs)
        out.append(f"shards of different {what}: {detail}")
    if out:
        return out  # the counts below would only repeat the difference
    seen: dict[int, list[ShardRun]] = {}
    for r in runs:
        seen.setdefault(int(r.shard["index"]), []).append(r)
    for index, given in sorted(seen.items()):
        if len(given) > 1:
            out.append(f"shard {index}/{first.shard['count']} given twice: {', '.join(str(r.folder) for r in given)}")
    where: dict[str, list[str]] = {}
    for r in runs:
        for res in r.doc["results"]:
            where.setdefault(case_name(res), []).append(str(r.folder))
    twice = {name: folders for name, folders in where.items() if len(folders) > 1}
    if twice:
        out.append(
            f"{len(twice)} case(s) ran twice: "
            + "; ".join(f"{name} (in {', '.join(folders)})" for name, folders in sorted(twice.items())[:SHOWN])
            + (f" and {len(twice) - SHOWN} more" if len(twice) > SHOWN else "")
        )
    selection = set(first.shard["selection"])
    nowhere = selection - set(where)
    if nowhere:
        absent = sorted(set(range(1, int(first.shard["count"]) + 1)) - set(seen))
        count = first.shard["count"]
        hint = f" (shard(s) {', '.join(f'{k}/{count}' for k in absent)} not given)" if absent else ""
        out.append(f"{len(nowhere)} case(s) of the selection ran nowhere{hint}: {_listed(nowhere)}")
    stray = set(where) - selection
    if stray:
        out.append(f"{len(stray)} case(s) ran but are not in the selection the shards recorded: {_listed(stray)}")
    with_junit = [r for r in runs if r.junit]
    if with_junit and len(with_junit) != len(runs):
        missing = [str(r.folder) for r in runs if not r.junit]
        out.append(f"JUnit XML in some shards but not in {', '.join(missing)}: give every shard --junitxml, or none")
    return out + _benchmark_problems(runs)


def _machine(doc: dict) -> str:
    """The machine a pytest-benchmark document was recorded on: its node name, CPU and GPU where recorded."""
    info = doc.get("machine_info") or {}
    cpu = (info.get("cpu") or {}).get("brand_raw") or info.get("processor") or ""
    gpu = info.get("gpu") or info.get("cuda_device") or ""
    return " | ".join(str(x) for x in (info.get("node") or "unknown", cpu, gpu) if x)


def _benchmark_problems(runs: Sequence[ShardRun]) -> list[str]:
    where: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        for path, doc in r.benchmarks:
            for bench in doc.get("benchmarks") or []:
                key = (_machine(doc), str(bench.get("fullname") or bench.get("name")))
                where.setdefault(key, []).append(str(path))
    twice = sorted((k, v) for k, v in where.items() if len(v) > 1)
    if not twice:
        return []
    return [
        f"{len(twice)} throughput record(s) twice on one machine: "
        + "; ".join(f"{name} on {machine} (in {', '.join(paths)})" for (machine, name), paths in twice[:SHOWN])
    ]


def merged_benchmarks(runs: Sequence[ShardRun]) -> dict[str, dict]:
    """The shards' pytest-benchmark documents, one per machine (its records from every shard that ran there)."""
    out: dict[str, dict] = {}
    for r in runs:
        for _, doc in r.benchmarks:
            machine = _machine(doc)
            if machine not in out:
                out[machine] = copy.deepcopy(doc)
            else:
                out[machine]["benchmarks"].extend(copy.deepcopy(doc.get("benchmarks") or []))
    return out


def _merge_junit(paths: Sequence[Path]) -> str:
    root = ET.Element("testsuites")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    seconds = 0.0
    for path in paths:
        top = ET.parse(path).getroot()
        for suite in [top] if top.tag == "testsuite" else list(top.iter("testsuite")):
            suite.set("name", f"{suite.get('name', 'pytest')} ({path.parent.name})")
            root.append(suite)
            for key in totals:
                totals[key] += int(suite.get(key, "0") or 0)
            seconds += float(suite.get("time", "0") or 0)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "machine"


def merge(folders: Sequence[str | Path], out: str | Path) -> tuple[list[CaseResult], list[Path]]:
    """Merge the shards in ``folders`` into ``out``; MergeError (one line per problem) before anything is written."""
    from qaclip_harness.report.html import write_html

    runs = [read_shard(f) for f in folders]
    found = problems(runs)
    if found:
        raise MergeError(found)
    out = Path(out)
    first = runs[0]
    results = sorted(
        (CaseResult(**res) for r in runs for res in r.doc["results"]), key=lambda r: (r.dataset, r.model, r.variant)
    )
    meta = {k: v for k, v in first.doc["meta"].items() if k not in ("shard", "time", "interrupted")}
    meta["time"] = max(str(r.doc["meta"].get("time", "")) for r in runs)
    meta["selection"] = sorted(first.shard["selection"])
    meta["expected_sha256"] = first.shard.get("expected_sha256")
    meta["merged_from"] = [
        {
            "folder": str(r.folder),
            "shard": f"{r.shard['index']}/{r.shard['count']}",
            "cases": len(r.doc["results"]),
            "time": r.doc["meta"].get("time"),
            "device": (r.doc.get("environment") or {}).get("device_name"),
        }
        for r in sorted(runs, key=lambda r: int(r.shard["index"]))
    ]
    if any(r.doc["meta"].get("interrupted") for r in runs):
        meta["interrupted"] = True
    paths = write_reports(results, out, meta, environment=first.doc.get("environment") or {})
    documents = merged_benchmarks(runs)
    for machine, doc in documents.items():
        paths.append(
            atomic_write_text(
                out / f"benchmark-{_slug(machine)}.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
            )
        )
    paths.append(write_html(out, list(documents.values())))
    if first.junit:
        paths.append(atomic_write_text(out / "junit.xml", _merge_junit([p for r in runs for p in r.junit])))
    return results, paths
