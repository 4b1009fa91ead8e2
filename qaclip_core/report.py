"""Result tables: one per dataset, rows = models, columns = metrics, cells = measured and delta."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from .expected import METRIC_ORDER, MetricCheck

SHORT = {
    "t2i_r1": "T2I R@1", "t2i_r5": "T2I R@5", "t2i_r10": "T2I R@10",
    "i2t_r1": "I2T R@1", "i2t_r5": "I2T R@5", "i2t_r10": "I2T R@10",
    "t2i_mean_recall": "T2I MR", "i2t_mean_recall": "I2T MR", "mean_recall": "MR",
    "top1": "Top-1", "top5": "Top-5",
}


@dataclass
class CaseResult:
    """The outcome of one reproduction case."""

    dataset: str
    model: str
    status: str  # passed, failed, skipped, error
    kind: str = "retrieval"
    precision: str = "fp32"
    device: str = ""
    reason: str = ""
    checks: List[dict] = field(default_factory=list)  # MetricCheck as dicts, with delta/ok
    measured: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    seconds: Optional[float] = None

    @classmethod
    def from_checks(cls, dataset: str, model: str, kind: str, checks: Iterable[MetricCheck], **kw) -> "CaseResult":
        """A passed/failed result from metric checks."""
        rows = [dict(asdict(c), delta=c.delta, ok=c.ok) for c in checks]
        status = "passed" if all(r["ok"] for r in rows) else "failed"
        return cls(dataset=dataset, model=model, kind=kind, status=status, checks=rows, **kw)


def failure_table(checks: Iterable[MetricCheck]) -> str:
    """Plain-text table of measured, expected, delta and tolerance for every metric."""
    lines = [f"{'metric':<16}{'measured':>10}{'expected':>10}{'delta':>9}{'tol':>7}  "]
    for c in checks:
        mark = "ok" if c.ok else "FAIL"
        lines.append(f"{c.metric:<16}{c.measured:>10.2f}{c.expected:>10.2f}{c.delta:>+9.2f}{c.tolerance:>7.2f}  {mark}")
    return "\n".join(lines)


def _columns(results: List[CaseResult]) -> List[str]:
    kind = results[0].kind
    seen = {r["metric"] for res in results for r in res.checks}
    order = METRIC_ORDER.get(kind, sorted(seen))
    return [m for m in order if m in seen]


def _cell(res: CaseResult, metric: str) -> str:
    for r in res.checks:
        if r["metric"] == metric:
            flag = "" if r["ok"] else "!"
            if "cell" in r:  # a check that formats its own value (checkpoint gates)
                return f"{r['cell']}{flag}"
            return f"{r['measured']:.1f} ({r['delta']:+.1f}){flag}"
    return ""


def _tables(results: List[CaseResult]) -> Dict[str, List[CaseResult]]:
    by_ds: Dict[str, List[CaseResult]] = {}
    for r in results:
        by_ds.setdefault(r.dataset, []).append(r)
    return by_ds


def _note(r: CaseResult) -> str:
    # the table keeps the first clause of a skip reason; the full line is pytest's -rs output
    if r.status == "skipped":
        return f"skipped: {r.reason.split('; ')[0]}"
    return f"error: {r.reason}" if r.status == "error" else r.status


def render_text(results: List[CaseResult]) -> str:
    """Terminal tables, one per dataset, like the seed README's result tables."""
    out = []
    for ds, rows in _tables(results).items():
        measured = [r for r in rows if r.checks]
        cols = _columns(measured) if measured else []
        width = max(len(r.model) for r in rows) + 2
        own = measured and all("cell" in r for res in measured for r in res.checks)  # checkpoint gates
        legend = "measured" if own else "measured (measured - expected)"
        out.append(f"{ds}  (cells: {legend}; ! = outside tolerance)")
        out.append(f"{'model':<{width}}" + "".join(f"{SHORT.get(c, c):>15}" for c in cols) + "  status")
        for r in rows:
            cells = "".join(f"{_cell(r, c):>15}" for c in cols)
            out.append(f"{r.model:<{width}}{cells}  {_note(r)}")
        out.append("")
    return "\n".join(out)


def render_markdown(results: List[CaseResult]) -> str:
    """The same tables in Markdown."""
    out = ["# Reproduction report", ""]
    for ds, rows in _tables(results).items():
        measured = [r for r in rows if r.checks]
        cols = _columns(measured) if measured else []
        out.append(f"## {ds}")
        out.append("")
        out.append("| model | " + " | ".join(SHORT.get(c, c) for c in cols) + " | status |")
        out.append("|---|" + "---|" * (len(cols) + 1))
        for r in rows:
            out.append(f"| {r.model} | " + " | ".join(_cell(r, c) for c in cols) + f" | {_note(r)} |")
        out.append("")
    out.append("Cells: measured (measured - expected); ! marks a value outside its tolerance.")
    return "\n".join(out) + "\n"


def write_reports(results: List[CaseResult], directory: Union[str, Path], meta: Optional[dict] = None) -> List[Path]:
    """Write ``report.json`` and ``report.md`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "report.json"
    md = directory / "report.md"
    js.write_text(json.dumps({"meta": meta or {}, "results": [asdict(r) for r in results]}, indent=2, ensure_ascii=False), encoding="utf-8")
    md.write_text(render_markdown(results), encoding="utf-8")
    return [js, md]
