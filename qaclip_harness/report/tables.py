"""Result tables: one per dataset, rows = models, columns = metrics, cells = measured and delta."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qaclip_harness.expected import METRIC_ORDER, MetricCheck
from qaclip_harness.files import atomic_write_text, remove_stale_temporaries
from qaclip_harness.report.escape import json_text, markdown_cell, markdown_inline, number_text

SHORT = {
    "t2i_r1": "T2I R@1",
    "t2i_r5": "T2I R@5",
    "t2i_r10": "T2I R@10",
    "i2t_r1": "I2T R@1",
    "i2t_r5": "I2T R@5",
    "i2t_r10": "I2T R@10",
    "t2i_mean_recall": "T2I MR",
    "i2t_mean_recall": "I2T MR",
    "mean_recall": "MR",
    "top1": "Top-1",
    "top5": "Top-5",
    "image_max_abs_diff": "img max|d|",
    "text_max_abs_diff": "txt max|d|",
    "image_min_cosine": "img min cos",
    "text_min_cosine": "txt min cos",
    "t2i_top5_violations": "T2I top-5 off",
    "i2t_top5_violations": "I2T top-5 off",
}


@dataclass
class CaseResult:
    """The outcome of one reproduction case."""

    dataset: str
    model: str
    status: str  # passed, failed, skipped, error, reported (measured, shown, not gated), interrupted
    kind: str = "retrieval"
    precision: str = "fp32"
    device: str = ""
    reason: str = ""
    checks: list[dict] = field(default_factory=list)  # MetricCheck as dicts, with delta/ok
    measured: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    gate: str | None = None  # the source the checks compare with
    gate_reason: str = ""  # why that source (the data's build)
    sources: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # source -> metric -> expected, delta
    checkpoint_sha256: str | None = None
    data_fingerprint: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # data build, split check, batch size, label file...
    backend: str = "pytorch"
    variant: str = ""  # the settings an expected entry was published for ("onnx fp16"): its own table
    # computed here or reused from a cache: {"status", "cache": mode, "steps": {images|texts|classifier: {status, key, run, date}}}
    features: dict[str, Any] = field(default_factory=dict)
    # per item against the reference's decisions, or on totals, and why (qaclip_harness.gates.decisions)
    decisions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checks(
        cls, dataset: str, model: str, kind: str, checks: Iterable[MetricCheck], report_only: str | None = None, **kw
    ) -> CaseResult:
        """A passed/failed result from metric checks; ``reported`` (never failed) for a report-only case."""
        rows = [dict(asdict(c), delta=c.delta, ok=c.ok) for c in checks]
        if report_only is not None:
            return cls(
                dataset=dataset, model=model, kind=kind, status="reported", checks=rows, reason=report_only, **kw
            )
        provenance = kw.get("provenance") or {}
        if provenance.get("comparable") is False:
            check = provenance.get("split_check") or {}
            why = f"evaluated with --evaluate-any-split: {check.get('cause') or 'not the published split'}"
            return cls(dataset=dataset, model=model, kind=kind, status="not comparable", checks=rows, reason=why, **kw)
        status = "passed" if all(r["ok"] for r in rows) else "failed"
        return cls(dataset=dataset, model=model, kind=kind, status=status, checks=rows, **kw)


def failure_table(checks: Iterable[MetricCheck]) -> str:
    """Plain-text table of measured, expected, delta and tolerance for every metric."""
    lines = [f"{'metric':<16}{'measured':>10}{'expected':>10}{'delta':>9}{'tol':>7}  "]
    for c in checks:
        mark = "ok" if c.ok else "FAIL"
        lines.append(f"{c.metric:<16}{c.measured:>10.2f}{c.expected:>10.2f}{c.delta:>+9.2f}{c.tolerance:>7.2f}  {mark}")
    return "\n".join(lines)


def _columns(results: list[CaseResult]) -> list[str]:
    kind = results[0].kind
    seen = list(
        dict.fromkeys(
            [r["metric"] for res in results for r in res.checks] or [m for res in results for m in res.measured]
        )
    )  # first-seen order
    order = METRIC_ORDER.get(kind, [])
    return [m for m in order if m in seen] + [m for m in seen if m not in order]


def _cell(res: CaseResult, metric: str) -> str:
    for r in res.checks:
        if r["metric"] == metric:
            flag = "" if r.get("ok") else "!"
            if "cell" in r:  # a check that formats its own value (checkpoint gates)
                return f"{r['cell']}{flag}"
            spec = r.get("format")  # e.g. ".1e" for feature differences of parity cases
            if res.kind == "parity":  # feature differences near 1e-7 or counts, held against 0: no delta
                return f"{number_text(r.get('measured'), spec or '.1e')}{flag}"
            spec = spec or ".1f"
            return f"{number_text(r.get('measured'), spec)} ({number_text(r.get('delta'), '+' + spec)}){flag}"
    if res.status == "reported" and not res.checks and metric in res.measured:  # measured only: no published value
        return number_text(res.measured[metric], ".1f")
    return ""


def _tables(results: list[CaseResult]) -> dict[str, list[CaseResult]]:
    by_ds: dict[str, list[CaseResult]] = {}
    for r in results:
        by_ds.setdefault(f"{r.dataset} [{r.variant}]" if r.variant else r.dataset, []).append(r)
    return by_ds


def _note(r: CaseResult) -> str:
    # the table keeps the first clause of a skip reason; the full line is pytest's -rs output
    if r.status == "skipped":
        return f"skipped: {r.reason.split('; ')[0]}"
    if r.status == "reported":
        return f"reported, not gated: {r.reason.split('; ')[0]}"
    if r.status == "not comparable":
        return f"not comparable ({r.reason})"
    if r.status == "interrupted":
        return "interrupted (Ctrl-C) while running"
    return f"error: {r.reason}" if r.status == "error" else r.status


def _short(metric: str) -> str:
    return SHORT.get(metric, metric)


def _other_sources(rows: list[CaseResult]) -> list[tuple]:
    """(model, text): the delta against every source other than the gate, and why the gate is the gate."""
    out = []
    for r in rows:
        others = {src: d for src, d in r.sources.items() if src != r.gate and d}
        if not others and "the declared gate, measured on" not in r.gate_reason:
            continue  # one source, measured on this very data: nothing to explain
        parts = [f"gate {r.gate} ({r.gate_reason})"] if r.gate else []
        for src, deltas in sorted(others.items()):
            parts.append(
                f"{src}: " + ", ".join(f"{_short(m)} {number_text(v['delta'], '+.1f')}" for m, v in deltas.items())
            )
        out.append((r.model, "; ".join(parts)))
    return out


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in counts.items() if isinstance(v, int))


def _provenance_rows(rows: list[CaseResult]) -> list[list[str]]:
    out = []
    for r in rows:
        p = r.provenance or {}
        if not (r.checkpoint_sha256 or r.data_fingerprint):
            continue
        check = p.get("split_check") or {}
        split = "" if not check else ("published size" if check.get("ok") else "NOT the published size")
        label = p.get("label_file_sha256")
        out.append(
            [
                r.model,
                (r.checkpoint_sha256 or "")[:12],
                (r.data_fingerprint or "")[:12],
                str(p.get("build") or "unknown"),
                _fmt_counts(p.get("counts") or r.counts),
                split,
                str(p.get("batch_size", "")),
                r.precision,
                (label or "")[:12],
            ]
        )
    return out


def describe_features(features: dict[str, Any]) -> str:
    """One line: the case's features computed in this run, or reused from which run, date and key (per step)."""
    steps = features.get("steps") or {}
    if not steps:
        return ""
    keys = ", ".join(f"{name} {str(s.get('key', ''))[:12]}" for name, s in steps.items())
    statuses = {s.get("status") for s in steps.values()}
    runs = {s.get("run") for s in steps.values()}
    if statuses == {"computed"}:
        head = "features computed"
    elif statuses == {"reused"} and len(runs) == 1:  # one run computed them all, seconds apart: its first date
        head = f"features reused from {next(iter(runs))}, {min(str(s.get('date')) for s in steps.values())}"
    else:
        head = "features: " + "; ".join(
            f"{name} reused from {s.get('run')}, {s.get('date')}" if s.get("status") == "reused" else f"{name} computed"
            for name, s in steps.items()
        )
    for name, s in steps.items():
        resumed = s.get("resumed")
        if isinstance(resumed, dict):  # an interrupted run's chunks: how much of the split was not encoded again
            sources = resumed.get("from")
            head += (
                f"; {name}: {resumed.get('images')} of {resumed.get('of_images')} resumed from an interrupted run "
                f"({resumed.get('chunks')} of {resumed.get('of_chunks')} chunks, "
                f"{'; '.join(map(str, sources)) if isinstance(sources, list) else sources})"
            )
    return f"{head} (cache {features.get('cache')}; keys {keys})"


def _features_lines(rows: list[CaseResult]) -> list[tuple]:
    return [(r.model, describe_features(r.features)) for r in rows if r.features and describe_features(r.features)]


def _decision_lines(rows: list[CaseResult]) -> list[tuple]:
    """(model, text): each row's decision gate, per item or on totals (one line when every row says the same)."""
    lines = [(r.model, str(r.decisions.get("summary"))) for r in rows if r.decisions.get("summary")]
    if len(lines) > 1 and len({text for _, text in lines}) == 1:
        return [("every model", lines[0][1])]
    return lines


def _details(rows: list[CaseResult]) -> list[tuple]:
    """(model, text) for report-only rows whose reason goes beyond its first clause (the table shows that one)."""
    return [(r.model, r.reason.split("; ", 1)[1]) for r in rows if r.status == "reported" and "; " in r.reason]


def render_text(results: list[CaseResult]) -> str:
    """Terminal tables, one per dataset, like the seed README's result tables (and the combined grids)."""
    from qaclip_harness.report.grid import render_grid_text, split_grids

    grids, results = split_grids(results)
    out = []
    for ds, rows in _tables(results).items():
        measured = [r for r in rows if r.checks or r.measured]
        cols = _columns(measured) if measured else []
        width = max(len(r.model) for r in rows) + 2
        own = measured and all("cell" in r for res in measured for r in res.checks)  # checkpoint gates
        legend = "measured" if own else "measured (measured - expected)"
        out.append(f"{ds}  (cells: {legend}; ! = outside tolerance)")
        out.append(f"{'model':<{width}}" + "".join(f"{SHORT.get(c, c):>15}" for c in cols) + "  status")
        for r in rows:
            cells = "".join(f"{_cell(r, c):>15}" for c in cols)
            out.append(f"{r.model:<{width}}{cells}  {_note(r)}")
        out.extend(f"  {model}: {text}" for model, text in _details(rows))
        out.extend(f"  {model}: {text}" for model, text in _other_sources(rows))
        out.extend(
            f"  {row[0]}: data {row[2]}... (build {row[3]}; {row[4]}; {row[5]}), checkpoint {row[1]}..."
            for row in _provenance_rows(rows)
        )
        out.extend(f"  {model}: {text}" for model, text in _features_lines(rows))
        out.extend(f"  {model}: {text}" for model, text in _decision_lines(rows))
        out.append("")
    out.extend(render_grid_text(g) for g in grids)
    return "\n".join(out)


def _md_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"


def render_markdown(results: list[CaseResult]) -> str:
    """The same tables in Markdown (every string from a result escaped for the cell, item or heading it lands in)."""
    from qaclip_harness.report.grid import render_grid_markdown, split_grids

    grids, results = split_grids(results)
    out = ["# Reproduction report", ""]
    for ds, rows in _tables(results).items():
        measured = [r for r in rows if r.checks or r.measured]
        cols = _columns(measured) if measured else []
        out.append(f"## {markdown_inline(ds)}")
        out.append("")
        header = ["model", *(SHORT.get(c, c) for c in cols), "status"]
        out.append(_md_row(header))
        out.append("|" + "---|" * len(header))
        for r in rows:
            out.append(_md_row([r.model, *(_cell(r, c) for c in cols), _note(r)]))
        out.append("")
        notes = _details(rows) + _other_sources(rows)
        out.extend(f"- {markdown_inline(model)}: {markdown_inline(text)}" for model, text in notes)
        if notes:
            out.append("")
        prov = _provenance_rows(rows)
        if prov:
            header = [
                "model",
                "checkpoint sha256",
                "data fingerprint",
                "data build",
                "counts",
                "split",
                "batch",
                "precision",
                "label file sha256",
            ]
            out.append("Provenance (first 12 hex digits; full values in report.json):")
            out.append("")
            out.append(_md_row(header))
            out.append("|" + "---|" * len(header))
            out.extend(_md_row(row) for row in prov)
            out.append("")
        reuse = _features_lines(rows) + _decision_lines(rows)
        if reuse:
            out.extend(f"- {markdown_inline(model)}: {markdown_inline(text)}" for model, text in reuse)
            out.append("")
    out.extend(render_grid_markdown(g) for g in grids)
    out.append("Cells: measured (measured - expected); ! marks a value outside its tolerance.")
    return "\n".join(out) + "\n"


def _environment_lines(env: dict) -> list[str]:
    git = env.get("git") or {}
    num = env.get("numerics") or {}
    return [
        f"- qaclip_core {env.get('qaclip_core')}"
        + (
            f", commit {git.get('commit', '')[:12]}{' (uncommitted changes)' if git.get('dirty') else ''}"
            if git
            else ""
        ),
        f"- torch {env.get('torch')}, torchvision {env.get('torchvision')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}",
        f"- device {env.get('device')} ({env.get('device_name')})",
        f"- TF32 matmul {num.get('tf32_matmul')}, TF32 cuDNN {num.get('tf32_cudnn')}, deterministic {num.get('deterministic_algorithms')}",
        f"- cn_clip {env.get('cn_clip')}, transformers {env.get('transformers')}",
    ]


def write_reports(
    results: list[CaseResult], directory: str | Path, meta: dict | None = None, environment: dict | None = None
) -> list[Path]:
    """Write ``report.json`` and ``report.md`` to ``directory``, each atomically (OutputError naming the file when one cannot be).

    Temporaries left there by a writer that died (a kill, a full disk) are removed first. report.html: :mod:`.html`.
    """
    directory = Path(directory)
    remove_stale_temporaries(directory)
    meta = meta or {}
    doc = {"meta": meta, "environment": environment or {}, "results": [asdict(r) for r in results]}
    # json_text: a lone surrogate (a name read from a file) is written as its \uXXXX escape, the same JSON value
    js = atomic_write_text(directory / "report.json", json_text(doc, indent=2, default=str))
    text = render_markdown(results)
    if meta.get("interrupted"):
        ran = sum(r.status not in ("skipped", "interrupted") for r in results)
        text = text.replace(
            "# Reproduction report\n",
            "# Reproduction report\n\n**The run was interrupted** (Ctrl-C): "
            f"this partial report holds the {ran} case(s) that ran and the one that was interrupted.\n",
            1,
        )
    if environment:
        lines = (f"- {markdown_inline(line[2:])}" for line in _environment_lines(environment))
        text += "\n## Environment\n\n" + "\n".join(lines) + "\n"
    md = atomic_write_text(directory / "report.md", text)
    return [js, md]
