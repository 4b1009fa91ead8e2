"""The history of every number: earlier runs' ``report.json`` and pytest-benchmark JSON, read in order.

A run is a folder holding ``report.json`` (the suite's ``--report``), pytest-benchmark ``*.json``
files, or both, and optionally ``predictions/<case>/`` (what ``qaclip eval --dump-predictions``
wrote). A history store is a folder of runs (``qaclip keep-run`` adds one). Runs are taken in the
order given, a store's runs oldest first (by the time the suite recorded, then by name); the last
run is the current one and the run before it is the one it is compared with (on a runner, the
last run kept on main).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import read_json
from qaclip_harness.files import remove_stale_temporaries, temp_path
from qaclip_harness.report.diff import load_report
from qaclip_harness.report.escape import markdown_cell, markdown_fence, markdown_inline
from qaclip_harness.report.ranks import RankDiff, rank_changes
from qaclip_harness.report.throughput import check_benchmark_json, is_benchmark_json, records

ACCURACY_KINDS = ("retrieval", "zeroshot")
SECTIONS = ("accuracy", "gate", "throughput")
THROUGHPUT_ALERT = 10.0  # percent slower than the run before: marked (the gate's --benchmark-compare-fail is 10% too)


@dataclass
class Run:
    """One kept run: its report, its pytest-benchmark documents and its prediction folders."""

    name: str
    path: Path
    report: dict | None
    benchmarks: list[dict]
    predictions: dict[str, Path] = field(default_factory=dict)

    @property
    def time(self) -> str:
        """When the suite wrote the report (or pytest-benchmark its file); empty when unknown."""
        if self.report and (self.report.get("meta") or {}).get("time"):
            return str(self.report["meta"]["time"])
        return next((str(b.get("datetime")) for b in self.benchmarks if b.get("datetime")), "")

    @property
    def commit(self) -> str:
        """The git commit the run was made from (first 12 hex digits), or empty."""
        git = ((self.report or {}).get("environment") or {}).get("git") or {}
        if git.get("commit"):
            return str(git["commit"])[:12]
        return next((str((b.get("commit_info") or {}).get("id", ""))[:12] for b in self.benchmarks), "")


def _json(path: Path) -> object:
    """A JSON file's document, or None when it cannot be read as JSON (then it is not a run's file)."""
    try:
        return read_json(path)
    except QAClipError:
        return None


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds a report.json or a pytest-benchmark JSON file."""
    if (folder / "report.json").is_file():
        return True
    return any(is_benchmark_json(_json(p)) for p in folder.glob("*.json") if p.is_file())


def load_run(folder: str | Path) -> Run:
    """One run folder (a bad report.json is an error naming it; other JSON files that are not benchmarks are ignored)."""
    folder = Path(folder)
    report = load_report(folder / "report.json") if (folder / "report.json").is_file() else None
    benches = [  # a file that looks like pytest-benchmark's is checked as one (an error names it and the key)
        check_benchmark_json(doc, p)
        for p in sorted(folder.glob("*.json"))
        if p.name != "report.json" and p.is_file()
        for doc in [_json(p)]
        if doc is not None and is_benchmark_json(doc)
    ]
    if report is None and not benches:
        raise QAClipError(f"{folder}: not a run (no report.json and no pytest-benchmark JSON file)")
    preds = folder / "predictions"
    predictions = {p.name: p for p in sorted(preds.iterdir()) if p.is_dir()} if preds.is_dir() else {}
    return Run(folder.name, folder, report, benches, predictions)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The runs of ``paths`` in order: a run folder itself, or a store's runs oldest first."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise QAClipError(f"{p}: no such folder (expected a run folder or a folder of runs)")
        if is_run(p):
            runs.append(load_run(p))
            continue
        inner = [load_run(q) for q in sorted(p.iterdir()) if q.is_dir() and not q.name.startswith(".") and is_run(q)]
        if not inner and any(p.iterdir()):
            raise QAClipError(f"{p}: holds no runs (folders with report.json or pytest-benchmark JSON)")
        runs.extend(sorted(inner, key=lambda r: (r.time, r.name)))
    return runs


@dataclass(frozen=True)
class Key:
    """One number followed over runs."""

    section: str  # accuracy, gate, throughput
    case: str  # dataset [variant] / model, or a benchmark group
    metric: str  # a metric, a gate check, or an implementation


@dataclass
class Point:
    """One number of one run, with what it is held against."""

    value: float
    tolerance: float | None = None
    expected: float | None = None
    status: str = ""


def _case_name(r: dict) -> str:
    table = f"{r['dataset']} [{r['variant']}]" if r.get("variant") else r["dataset"]
    return f"{table} / {r['model']}"


def points(run: Run) -> dict[Key, Point]:
    """Every number of one run: measured metrics, gate drifts and throughput."""
    out: dict[Key, Point] = {}
    for r in (run.report or {}).get("results", []):
        section = "accuracy" if r.get("kind") in ACCURACY_KINDS else "gate"
        for c in r.get("checks") or []:
            if isinstance(c.get("measured"), (int, float)) and not isinstance(c.get("measured"), bool):
                out[Key(section, _case_name(r), c["metric"])] = Point(
                    float(c["measured"]), c.get("tolerance"), c.get("expected"), r.get("status", "")
                )
        if not r.get("checks"):
            for m, v in (r.get("measured") or {}).items():
                if isinstance(v, (int, float)):
                    out[Key(section, _case_name(r), m)] = Point(float(v), status=r.get("status", ""))
    for doc in run.benchmarks:
        for rec in records(doc):
            out[Key("throughput", rec.group, rec.impl)] = Point(rec.per_s, status=rec.unit)
    return out


def statuses(run: Run) -> dict[str, str]:
    """case -> status of one run's report."""
    return {_case_name(r): r.get("status", "") for r in (run.report or {}).get("results", [])}


@dataclass
class Move:
    """A number that differs between the previous and the current run."""

    key: Key
    before: float | None
    after: float | None
    tolerance: float | None

    @property
    def change(self) -> float | None:
        """after - before (None when either is missing)."""
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def share(self) -> float | None:
        """|change| as a share of the tolerance (accuracy and gates) or as a share of before (throughput)."""
        if self.change is None:
            return None
        if self.key.section == "throughput":
            return abs(self.change) / self.before if self.before else None
        return abs(self.change) / self.tolerance if self.tolerance else None

    @property
    def alert(self) -> bool:
        """Throughput that fell by more than the alert threshold."""
        return bool(
            self.key.section == "throughput"
            and self.change is not None
            and self.before
            and -self.change / self.before * 100 > THROUGHPUT_ALERT
        )


@dataclass
class History:
    """Runs in order, every number's series, and what moved between the last two runs."""

    runs: list[Run]
    series: dict[Key, list[Point | None]]
    moves: list[Move]
    status_changes: list[tuple[str, str, str]]  # case, before, after
    ranks: list[RankDiff]

    @property
    def labels(self) -> list[str]:
        """A short label per run: its folder name and commit."""
        return [
            f"{r.name}" + (f" ({r.commit[:7]})" if r.commit and r.commit[:7] not in r.name else "") for r in self.runs
        ]


def build(runs: list[Run]) -> History:
    """The history of ``runs`` (at least one; the last is the current run)."""
    if not runs:
        raise QAClipError("no runs to draw a history of")
    per_run = [points(r) for r in runs]
    keys = list(dict.fromkeys(k for pts in per_run for k in pts))
    series = {k: [pts.get(k) for pts in per_run] for k in keys}
    moves: list[Move] = []
    changes: list[tuple[str, str, str]] = []
    ranks: list[RankDiff] = []
    if len(runs) >= 2:
        prev, cur = per_run[-2], per_run[-1]
        for k in keys:
            a, b = prev.get(k), cur.get(k)
            if a is None and b is None:
                continue
            if a is None or b is None or a.value != b.value:
                tol = b.tolerance if b is not None else a.tolerance if a is not None else None
                moves.append(Move(k, a.value if a else None, b.value if b else None, tol))
        moves.sort(
            key=lambda m: (SECTIONS.index(m.key.section), m.share is None, -(m.share or 0.0), m.key.case, m.key.metric)
        )
        sa, sb = statuses(runs[-2]), statuses(runs[-1])
        changes = [
            (c, sa.get(c, "absent"), sb.get(c, "absent")) for c in dict.fromkeys([*sa, *sb]) if sa.get(c) != sb.get(c)
        ]
        for case in sorted(set(runs[-2].predictions) & set(runs[-1].predictions)):
            ranks.append(rank_changes(case, runs[-2].predictions[case], runs[-1].predictions[case]))
    return History(runs, series, moves, changes, ranks)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.2f}"


def _share(m: Move) -> str:
    if m.share is None:
        return "new" if m.before is None else ("gone" if m.after is None else "")
    unit = "of before" if m.key.section == "throughput" else "of tol"
    amount = f"{m.share:.0f}x" if m.share >= 10 else f"{m.share:.0%}"
    return f"{amount} {unit}" + (" !" if m.alert or (m.key.section != "throughput" and m.share > 1) else "")


def summary_rows(history: History, limit: int = 25) -> tuple[list[list[str]], int]:
    """The rows of the moved-numbers table (per section, largest share first, at most ``limit`` a section) and how
    many were left out."""
    rows, left = [], 0
    for section in SECTIONS:
        mine = [m for m in history.moves if m.key.section == section]
        rows += [
            [
                m.key.section,
                m.key.case,
                m.key.metric,
                _fmt(m.before),
                _fmt(m.after),
                "" if m.change is None else f"{m.change:+.3g}",
                _share(m),
            ]
            for m in mine[:limit]
        ]
        left += max(0, len(mine) - limit)
    return rows, left


HEADER = ["section", "case / group", "number", "before", "now", "change", "share"]


def _intro(history: History) -> str:
    if len(history.runs) < 2:
        return f"one run ({history.labels[0]}): nothing to compare with yet"
    return (
        f"{len(history.runs)} runs; now = {history.labels[-1]}, before = {history.labels[-2]}: "
        f"{len(history.moves)} numbers moved, {len(history.status_changes)} cases changed status"
    )


def _rank_lines(history: History, limit: int) -> list[str]:
    out = []
    for d in history.ranks:
        out.append(
            f"{d.case}: {len(d.changes)} of {d.compared} queries changed rank or first answer "
            f"({d.better} better, {d.worse} worse)"
        )
        out.extend(f"  {c.text()}" for c in d.changes[:limit])
        if len(d.changes) > limit:
            out.append(f"  ... and {len(d.changes) - limit} more")
    return out


def render_text(history: History, limit: int = 25) -> str:
    """The compact table for a terminal: what moved since the run before, by how much of its tolerance."""
    lines = [_intro(history)]
    lines.extend(f"status: {c}: {a} -> {b}" for c, a, b in history.status_changes)
    rows, more = summary_rows(history, limit)
    if rows:
        table = [HEADER, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
        lines.extend(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in table
        )
        if more:
            lines.append(f"... and {more} more (qaclip history --json lists every one)")
    lines.extend(_rank_lines(history, 10))
    return "\n".join(lines) + "\n"


def render_markdown(history: History, limit: int = 25) -> str:
    """The same table for a job summary (GITHUB_STEP_SUMMARY)."""
    md = markdown_inline  # every string from a run (case names, statuses, run and folder names) escaped
    out = ["## What moved since the last run", "", md(_intro(history) + "."), ""]
    out.extend(f"- status of {md(c)}: {md(a)} -> **{md(b)}**" for c, a, b in history.status_changes)
    rows, more = summary_rows(history, limit)
    if rows:
        out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(markdown_cell(c) for c in r) + " |" for r in rows]
        if more:
            out.append(f"\n... and {more} more (report.html draws every number).")
    ranks = _rank_lines(history, 10)
    if ranks:
        out += ["", *markdown_fence(ranks)]
    out.append("")
    out.append(
        "share: the change as a share of the number's tolerance (accuracy, gates) or of its value before "
        f"(throughput); ! marks more than the tolerance, or throughput more than {THROUGHPUT_ALERT:.0f}% slower."
    )
    return "\n".join(out) + "\n"


def to_json(history: History) -> dict:
    """Everything :func:`render_text` says, as data."""
    return {
        "runs": [{"name": r.name, "path": str(r.path), "time": r.time, "commit": r.commit} for r in history.runs],
        "moved": [
            {
                "section": m.key.section,
                "case": m.key.case,
                "number": m.key.metric,
                "before": m.before,
                "after": m.after,
                "change": m.change,
                "tolerance": m.tolerance,
                "share": m.share,
                "alert": bool(m.alert),
            }
            for m in history.moves
        ],
        "status_changes": [{"case": c, "before": a, "after": b} for c, a, b in history.status_changes],
        "rank_changes": [
            {
                "case": d.case,
                "compared": d.compared,
                "better": d.better,
                "worse": d.worse,
                "changes": [vars(c) for c in d.changes],
            }
            for d in history.ranks
        ],
    }


def keep_run(run: str | Path, store: str | Path, name: str, keep_last: int | None = None) -> Path:
    """Copy the run folder ``run`` into ``store`` as ``<time>-<name>`` (whole or not at all); keep the newest ``keep_last``."""
    from qaclip_harness.options import OptionError, run_name

    try:
        run_name(name)
    except OptionError as e:
        raise QAClipError(str(e)) from None
    src = load_run(run)  # checks it is a run before anything is written
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise QAClipError(f"STORE {store}: expected a folder of runs, but it is a file")
    inside = src.path.resolve()
    if store.resolve() == inside or inside in store.resolve().parents:
        raise QAClipError(f"STORE {store} is inside the run {src.path}: the copy would hold itself")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QAClipError(f"STORE {store}: cannot create the folder ({e.strerror or e})") from None
    remove_stale_temporaries(store)
    stamp = "".join(ch for ch in src.time if ch.isalnum() and ch.isascii()) or "undated"
    target = store / f"{stamp[:32]}-{name}"
    if target.exists():
        raise QAClipError(f"{target} exists already: a run is kept once (give another --name)")
    tmp = temp_path(target, folder=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src.path, tmp)
        tmp.rename(target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise QAClipError(f"cannot keep {src.path} in {store}: {e.strerror or e}") from None
    if keep_last:
        kept = sorted(
            (load_run(p) for p in store.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run(p)),
            key=lambda r: (r.time, r.name),
        )
        for old in kept[:-keep_last]:
            shutil.rmtree(old.path, ignore_errors=True)
    return target
