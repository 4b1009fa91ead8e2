"""``report.html``: a run's results in one self-contained page (no script, no network, no font), figures inlined as SVG.

Per dataset the seed-style table and a plot of every metric's distance from its published value
against its tolerance; the checkpoint gates as drift against tolerance on a log scale;
throughput against the reference, the peers and a baseline; every case's numbers and
provenance in full; why cases skipped; the environment; and, given earlier runs, the history of
every number. Every number of a case is also in ``data-*`` attributes (``data-measured`` holds
the value exactly as report.json has it), so the page can be read back and checked.
Without matplotlib (the ``report`` extra) the page keeps its tables and says how to get the plots.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from qaclip_harness.files import atomic_write_text
from qaclip_harness.report import plots
from qaclip_harness.report.diff import flatten, load_report
from qaclip_harness.report.escape import css_class, number_text, scrub
from qaclip_harness.report.escape import html_text as escape
from qaclip_harness.report.grid import LEGEND as GRID_LEGEND
from qaclip_harness.report.grid import _model_order, split_grids
from qaclip_harness.report.grid import cell as grid_cell
from qaclip_harness.report.grid import notes as grid_notes
from qaclip_harness.report.history import HEADER as HISTORY_HEADER
from qaclip_harness.report.history import History, summary_rows
from qaclip_harness.report.history import render_text as history_text
from qaclip_harness.report.tables import (
    SHORT,
    CaseResult,
    _cell,
    _columns,
    _decision_lines,
    _details,
    _note,
    _other_sources,
    _tables,
)
from qaclip_harness.report.throughput import Group
from qaclip_harness.report.throughput import groups as benchmark_groups

ACCURACY_KINDS = ("retrieval", "zeroshot")
GATE_FLOOR = 1e-4  # a gate drift below this share of its tolerance (0 included) is drawn at it on the log scale
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1b1b1b;max-width:88rem}
h1{font-size:1.5rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin-top:1.5rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #d0d0d0;padding:.2rem .45rem;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.passed{color:#2a7d2a}.failed,.error,.out{color:#c62828;font-weight:600}.skipped{color:#777}
.reported,.not-comparable{color:#8a5a00}
td.out{background:#fdecea}
.note{color:#555;font-size:.85rem;margin:.2rem 0}
.fig svg{max-width:100%;height:auto}
details{margin:.3rem 0}summary{cursor:pointer}
code,pre{font-size:.8rem}pre{background:#f7f7f7;padding:.4rem;overflow-x:auto}
nav a{margin-right:1rem}
"""


def _result(d: dict) -> CaseResult:
    names = {f.name for f in dataclasses.fields(CaseResult)}
    return CaseResult(**{k: v for k, v in d.items() if k in names})


def _num(v: object) -> str:
    """A number exactly as JSON has it (repr round-trips a float)."""
    return "" if v is None else json.dumps(v)


def _attrs(**kw: object) -> str:
    return "".join(f' {k.replace("_", "-")}="{escape(str(v))}"' for k, v in kw.items() if v is not None)


def _case_attrs(r: CaseResult) -> str:
    return _attrs(data_dataset=r.dataset, data_model=r.model, data_variant=r.variant, data_status=r.status)


def _status_class(status: str) -> str:
    return css_class(status)  # one class name: a status read from a report.json is not markup


def _figure(svg: str | None, missing: str | None) -> str:
    if missing:
        return f'<p class="note plots-missing">{escape(missing)}</p>'
    return f'<div class="fig">{svg}</div>' if svg else ""


def _table(header: Sequence[str], rows: Iterable[str], left: int = 1, last_left: bool = False) -> str:
    head = "".join(
        f'<th class="l">{escape(h)}</th>'
        if i < left or (last_left and i == len(header) - 1)
        else f"<th>{escape(h)}</th>"
        for i, h in enumerate(header)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _check_of(r: CaseResult, metric: str) -> dict | None:
    return next((c for c in r.checks if c["metric"] == metric), None)


def _seed_table(rows: list[CaseResult]) -> str:
    measured = [r for r in rows if r.checks or r.measured]
    cols = _columns(measured) if measured else []
    body = []
    for r in rows:
        cells = [f'<td class="l">{escape(r.model)}</td>']
        for metric in cols:
            c = _check_of(r, metric)
            text = _cell(r, metric)
            if c is not None:
                attrs = _attrs(
                    data_metric=metric,
                    data_measured=_num(c.get("measured")),
                    data_expected=_num(c.get("expected")),
                    data_delta=_num(c.get("delta")),
                    data_tolerance=_num(c.get("tolerance")),
                    data_ok=str(bool(c.get("ok"))).lower(),
                )
                cls = ' class="out"' if not c.get("ok") else ""
                body_cell = f"<td{cls}{attrs}>{escape(text)}</td>"
            elif metric in r.measured:
                body_cell = (
                    f"<td{_attrs(data_metric=metric, data_measured=_num(r.measured[metric]))}>{escape(text)}</td>"
                )
            else:
                body_cell = "<td></td>"
            cells.append(body_cell)
        cells.append(f'<td class="l {_status_class(r.status)}">{escape(_note(r))}</td>')
        body.append(f'<tr class="case"{_case_attrs(r)}>{"".join(cells)}</tr>')
    return _table(["model", *(SHORT.get(c, c) for c in cols), "status"], body, last_left=True)


def _tolerance_points(rows: Iterable[CaseResult]) -> list[tuple[str, str, float, bool]]:
    pts = []
    for r in rows:
        for c in r.checks:
            if c.get("delta") is not None and c.get("tolerance"):
                pts.append(
                    (r.model, SHORT.get(c["metric"], c["metric"]), c["delta"] / c["tolerance"], bool(c.get("ok")))
                )
    return pts


def _provenance_table(rows: list[CaseResult]) -> str:
    body = []
    for r in rows:
        p = r.provenance or {}
        if not (r.checkpoint_sha256 or r.data_fingerprint or p):
            continue
        check = p.get("split_check") or {}
        split = (
            ""
            if not check
            else ("published size" if check.get("ok") else f"NOT the published size: {check.get('cause') or ''}")
        )
        counts = ", ".join(f"{v:,} {k}" for k, v in (p.get("counts") or r.counts or {}).items() if isinstance(v, int))
        cells = [
            r.model,
            r.checkpoint_sha256 or "",
            r.data_fingerprint or "",
            str(p.get("build") or "unknown"),
            counts,
            split,
            str(p.get("batch_size", "")),
            r.precision,
            r.device,
            r.backend,
            (f"{r.gate} ({r.gate_reason})" if r.gate else ""),
        ]
        # hashes show 12 hex digits; the whole value is the cell's title and data-full (and under "Every case")
        body.append(
            f'<tr class="provenance"{_case_attrs(r)}>'
            + "".join(
                f'<td class="l"{_attrs(title=c, data_full=c)}><code>{escape(c[:12])}</code></td>'
                if i in (1, 2)
                else f'<td class="l">{escape(c)}</td>'
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    if not body:
        return ""
    header = [
        "model",
        "checkpoint sha256",
        "data fingerprint",
        "data build",
        "counts",
        "split check",
        "batch",
        "precision",
        "device",
        "backend",
        "gate source",
    ]
    return '<p class="note">Provenance</p>' + _table(header, body, left=len(header))


def _dataset_section(name: str, rows: list[CaseResult], missing: str | None) -> str:
    out = [f'<section class="dataset" id="ds-{escape(name)}"><h3>{escape(name)}</h3>', _seed_table(rows)]
    notes = _details(rows) + _other_sources(rows) + _decision_lines(rows)
    out += [f'<p class="note">{escape(m)}: {escape(t)}</p>' for m, t in notes]
    pts = _tolerance_points(rows)
    if pts:
        out.append(
            _figure(
                None if missing else plots.tolerance_plot(f"{name}: distance from the published values", pts), missing
            )
        )
    out.append(_provenance_table(rows))
    out.append("</section>")
    return "".join(out)


def _grid_section(grid, missing: str | None) -> str:
    by_key = {(r.model, r.dataset): r for r in grid.results}
    present = {r.dataset for r in grid.results}
    columns = [(n, d) for n, d in grid.columns if n in present]
    models = _model_order([r.model for r in grid.results])  # the registry's order, as report.md has it
    body = []
    for m in models:
        cells = [f'<td class="l">{escape(m)}</td>']
        for name, _ in columns:
            r = by_key.get((m, name))
            if r is None:
                cells.append("<td></td>")
                continue
            c = _check_of(r, "top1")
            attrs = _case_attrs(r) + (
                _attrs(
                    data_metric="top1",
                    data_measured=_num(c.get("measured")),
                    data_delta=_num(c.get("delta")),
                    data_tolerance=_num(c.get("tolerance")),
                    data_ok=str(bool(c.get("ok"))).lower(),
                )
                if c
                else ""
            )
            cls = ' class="case out"' if c and not c.get("ok") and r.status != "reported" else ' class="case"'
            cells.append(f"<td{cls}{attrs}>{escape(grid_cell(r))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    out = [
        f'<section class="dataset grid" id="grid-{escape(grid.name)}"><h3>{escape(grid.title)}</h3>',
        _table(["model", *(d for _, d in columns)], body),
        f'<p class="note">{escape(GRID_LEGEND)}</p>',
    ]
    out += [f'<p class="note">{escape(n)}</p>' for n in grid_notes(grid)]
    display = dict(grid.columns)
    pts = [
        (r.model, display.get(r.dataset, r.dataset), c["delta"] / c["tolerance"], bool(c.get("ok")))
        for r in grid.results
        for c in r.checks
        if c.get("delta") is not None and c.get("tolerance")
    ]
    if pts:
        out.append(
            _figure(
                None if missing else plots.tolerance_plot(f"{grid.title}: distance from the published values", pts),
                missing,
            )
        )
    out.append(_provenance_table(sorted(grid.results, key=lambda r: (r.dataset, r.model))))
    out.append("</section>")
    return "".join(out)


def _drift_rows(rows: Iterable[CaseResult]) -> tuple[list[tuple[str, float, float, bool]], int]:
    out, exact = [], 0
    for r in rows:
        for c in r.checks:
            if c.get("delta") is None or c.get("tolerance") is None:
                continue
            if c["tolerance"] > 0:
                out.append(
                    (
                        f"{r.dataset}-{r.model} {SHORT.get(c['metric'], c['metric'])}",
                        abs(c["delta"]),
                        c["tolerance"],
                        bool(c.get("ok")),
                    )
                )
            else:
                exact += 1
    return out, exact


def _gates_section(gates: dict[str, list[CaseResult]], missing: str | None) -> str:
    out = [
        '<section id="gates"><h2>Checkpoint gates</h2>',
        (
            '<p class="note">Parity with the reference, golden features, ONNX and transformers-format parity, the README '
            "example: each drift (|measured - expected|) against its tolerance.</p>"
        ),
    ]
    for name, rows in gates.items():
        out.append(
            f'<section class="dataset" id="ds-{escape(name)}"><h3>{escape(name)}</h3>{_seed_table(rows)}</section>'
        )
    drifts, exact = _drift_rows(r for rows in gates.values() for r in rows)
    if drifts:
        out.append(
            _figure(None if missing else plots.drift_plot("checkpoint gates: drift against tolerance", drifts), missing)
        )
    if exact:
        out.append(
            f'<p class="note">{exact} checks are held at exactly 0 (counts of changed top-5 lists): they are in the '
            "tables above, not on the log scale.</p>"
        )
    out.append("</section>")
    return "".join(out)


def _fmt_speed(v: float | None) -> str:
    return "" if v is None else (f"{v:,.1f}" if v >= 10 else f"{v:.3g}")


def _throughput_section(docs: Sequence[dict], baseline: dict | None, missing: str | None) -> str:
    groups: list[Group] = [g for doc in docs for g in benchmark_groups(doc, baseline)]
    out = ['<section id="throughput"><h2>Throughput</h2>']
    if not groups:
        out.append(
            '<p class="note">No throughput records in this run (run the throughput cases with --benchmark-json '
            "or --benchmark-autosave, or keep pytest-benchmark JSON beside report.json).</p></section>"
        )
        return "".join(out)
    out.append(
        '<p class="note">Per group: qaclip_core against cn_clip (the reference) and the peer backends'
        + (", and every record against the baseline run it was compared with" if baseline else "")
        + ".</p>"
    )
    body, plot_rows = [], []
    for g in groups:
        ratios = dict(g.ratios())
        for r in g.records:
            base = g.baseline.get(r.fullname)
            mine = "; ".join(
                f"{k.split(' / ', 1)[1]} {v:.2f}x"
                for k, v in ratios.items()
                if k.startswith(f"{r.impl} / ") and not k.endswith(" / baseline")
            )
            attrs = _attrs(data_group=g.name, data_impl=r.impl, data_per_s=_num(r.per_s), data_baseline=_num(base))
            body.append(
                f'<tr class="bench"{attrs}><td class="l">{escape(g.name)}</td><td class="l">{escape(r.impl)}</td>'
                f'<td class="l">{escape(r.role)}</td><td>{_fmt_speed(r.per_s)}</td><td class="l">{escape(r.unit)}</td>'
                f"<td>{_fmt_speed(base)}</td><td>{'' if not base else f'{r.per_s / base:.2f}x'}</td>"
                f'<td class="l">{escape(mine)}</td></tr>'
            )
            plot_rows.append((f"{g.name} | {r.impl}", r.role, r.per_s, base))
    out.append(
        _table(
            ["group", "implementation", "role", "speed", "unit", "baseline", "vs baseline", "ours over"],
            body,
            left=3,
            last_left=True,
        )
    )
    out.append(_figure(None if missing else plots.throughput_plot("throughput", plot_rows), missing))
    out.append("</section>")
    return "".join(out)


def _case_details(r: CaseResult) -> str:
    checks = [
        f'<tr class="check"{_attrs(data_metric=c["metric"], data_measured=_num(c.get("measured")))}>'
        f'<td class="l">{escape(str(c["metric"]))}</td>'
        + "".join(f"<td>{escape(_num(c.get(k)))}</td>" for k in ("measured", "expected", "delta", "tolerance"))
        + f'<td class="{"passed" if c.get("ok") else "failed"}">{"ok" if c.get("ok") else "outside"}</td></tr>'
        for c in r.checks
    ]
    measured = [
        f'<tr class="measured"{_attrs(data_metric=k, data_measured=_num(v))}><td class="l">{escape(k)}</td>'
        f"<td>{escape(_num(v))}</td></tr>"
        for k, v in r.measured.items()
    ]
    fields = {
        "status": r.status,
        "reason": r.reason,
        "kind": r.kind,
        "precision": r.precision,
        "device": r.device,
        "backend": r.backend,
        "seconds": r.seconds,
        "gate": r.gate,
        "gate reason": r.gate_reason,
        "checkpoint sha256": r.checkpoint_sha256,
        "data fingerprint": r.data_fingerprint,
    }
    info = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(str(v))}</td></tr>'
        for k, v in fields.items()
        if v not in (None, "")
    )
    ident = f"{r.dataset}{f' [{r.variant}]' if r.variant else ''}-{r.model}"
    out = [
        (
            f'<details class="case-details"{_case_attrs(r)}><summary>{escape(ident)}: '
            f'<span class="{_status_class(r.status)}">{escape(r.status)}</span></summary>'
        ),
        f"<table>{info}</table>",
    ]
    if checks:
        out.append(_table(["metric", "measured", "expected", "delta", "tolerance", ""], checks))
    if measured:
        out.append(_table(["measured", "value"], measured))
    if r.provenance:
        out.append("<pre>" + escape(json.dumps(r.provenance, indent=1, ensure_ascii=False, default=str)) + "</pre>")
    out.append("</details>")
    return "".join(out)


def _skipped_section(results: list[CaseResult]) -> str:
    rows = [
        f'<tr{_case_attrs(r)}><td class="l">{escape(r.dataset)}</td><td class="l">{escape(r.model)}</td>'
        f'<td class="l {_status_class(r.status)}">{escape(r.status)}</td><td class="l">{escape(r.reason)}</td></tr>'
        for r in results
        if r.status in ("skipped", "error")
    ]
    if not rows:
        return '<section id="skipped"><h2>Skipped and errors</h2><p class="note">None: every selected case ran.</p></section>'
    return (
        '<section id="skipped"><h2>Skipped and errors</h2>'
        + _table(["dataset", "model", "status", "why"], rows, 4)
        + "</section>"
    )


def _environment_section(meta: dict, env: dict) -> str:
    rows = [
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(str(v))}</td></tr>'
        for k, v in {**{f"run.{k}": v for k, v in flatten(meta).items()}, **flatten(env)}.items()
    ]
    return f'<section id="environment"><h2>Run and environment</h2><table>{"".join(rows)}</table></section>'


def _history_row(row: list[str]) -> str:
    cells = "".join(f'<td class="l">{escape(c)}</td>' if i < 3 else f"<td>{escape(c)}</td>" for i, c in enumerate(row))
    return f"<tr>{cells}</tr>"


def _history_section(history: History, missing: str | None) -> str:
    out = ['<section id="history"><h2>History</h2>', f"<pre>{escape(history_text(history, limit=10**6))}</pre>"]
    rows, _ = summary_rows(history, limit=10**6)
    if rows:
        out.append(_table(HISTORY_HEADER, [_history_row(r) for r in rows], left=3))
    if missing:
        out.append(_figure(None, missing))
    elif len(history.runs) >= 2:
        labels = history.labels
        by_case: dict[tuple[str, str], dict[str, list]] = {}
        for key, series in history.series.items():
            by_case.setdefault((key.section, key.case), {})[key.metric] = series
        for (section, case), metrics in by_case.items():
            if section == "throughput":
                lines = {m: [p.value if p else None for p in s] for m, s in metrics.items()}
                out.append(
                    _figure(plots.history_plot(f"throughput: {case}", labels, lines, "per second", log=True), None)
                )
                continue
            # accuracy: signed distance from the published value in units of tolerance (the band);
            # gates: the drift in units of tolerance on a log scale (below 1 passes), a drift of 0 drawn at the floor
            lines = {}
            for m, s in metrics.items():
                ref = next((p for p in reversed(s) if p and p.tolerance), None)
                if ref is None or ref.expected is None:
                    continue
                if section == "gate":
                    lines[SHORT.get(m, m)] = [
                        max(abs(p.value - ref.expected) / ref.tolerance, GATE_FLOOR) if p else None for p in s
                    ]
                else:
                    lines[SHORT.get(m, m)] = [(p.value - ref.expected) / ref.tolerance if p else None for p in s]
            if lines and section == "gate":
                out.append(
                    _figure(
                        plots.history_plot(
                            f"gate: {case}",
                            labels,
                            lines,
                            "|drift| / tolerance (log)",
                            band=(GATE_FLOOR, 1.0),
                            log=True,
                        ),
                        None,
                    )
                )
            elif lines:
                out.append(
                    _figure(
                        plots.history_plot(
                            f"{section}: {case}", labels, lines, "(value - published) / tolerance", band=(-1.0, 1.0)
                        ),
                        None,
                    )
                )
    out.append("</section>")
    return "".join(out)


def _why_failed(r: CaseResult) -> str:
    outside = [
        f"{SHORT.get(c['metric'], c['metric'])} {number_text(c['delta'], '+.3g')} (tolerance {number_text(c['tolerance'], '.3g')})"
        for c in r.checks
        if not c.get("ok") and c.get("delta") is not None and c.get("tolerance") is not None
    ]
    if outside:
        return "outside tolerance: " + ", ".join(outside)
    return _note(r)


def render_html(
    doc: dict, benchmarks: Sequence[dict] = (), baseline: dict | None = None, history: History | None = None
) -> str:
    """The page for one report.json document, with its throughput (pytest-benchmark documents) and history."""
    missing = plots.missing()
    meta, env = doc.get("meta") or {}, doc.get("environment") or {}
    results = sorted((_result(d) for d in doc.get("results") or []), key=lambda r: (r.dataset, r.model))
    grids, rest = split_grids(results)
    accuracy = {k: v for k, v in _tables(rest).items() if v[0].kind in ACCURACY_KINDS}
    gates = {k: v for k, v in _tables(rest).items() if v[0].kind not in ACCURACY_KINDS}
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    git = env.get("git") or {}
    run = ", ".join(f"{k} {meta[k]}" for k in ("time", "device", "precision", "backend") if meta.get(k))
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>qaclip reproduction report</title><style>{STYLE}</style></head><body>",
        "<h1>Reproduction report</h1>",
        f'<p class="note">{escape(run)}'
        + (
            f"; commit <code>{escape(str(git.get('commit', ''))[:12])}</code>"
            f"{' (uncommitted changes)' if git.get('dirty') else ''}"
            if git
            else ""
        )
        + "</p>",
        '<p id="counts">'
        + ", ".join(f'<span class="{_status_class(s)}">{n} {escape(s)}</span>' for s, n in sorted(counts.items()))
        + "</p>",
        '<nav><a href="#datasets">datasets</a><a href="#gates">checkpoint gates</a><a href="#throughput">throughput</a>'
        '<a href="#cases">every case</a><a href="#skipped">skipped</a><a href="#environment">environment</a>'
        + ('<a href="#history">history</a>' if history else "")
        + "</nav>",
    ]
    if missing:
        out.append(f'<p class="note plots-missing">{escape(missing)}</p>')
    bad = [r for r in results if r.status in ("failed", "error")]
    if bad:
        out.append(
            '<section id="failures"><h2>Failures</h2><ul>'
            + "".join(
                f'<li class="{_status_class(r.status)}">{escape(r.dataset)}-{escape(r.model)}: {escape(_why_failed(r))}</li>'
                for r in bad
            )
            + "</ul></section>"
        )
    out.append(
        '<section id="datasets"><h2>Datasets</h2><p class="note">Cells: measured (measured - published); a red cell '
        "is outside its tolerance. The plot puts each metric at its distance from the published value in units of its "
        "tolerance: the shaded band is the tolerance.</p>"
    )
    out += [_dataset_section(name, rows, missing) for name, rows in accuracy.items()]
    out += [_grid_section(g, missing) for g in grids]
    if not accuracy and not grids:
        out.append('<p class="note">No dataset case in this run.</p>')
    out.append("</section>")
    out.append(
        _gates_section(gates, missing)
        if gates
        else '<section id="gates"><h2>Checkpoint gates</h2><p class="note">No gate case in this run.</p></section>'
    )
    out.append(_throughput_section(benchmarks, baseline, missing))
    out.append(
        '<section id="cases"><h2>Every case</h2><p class="note">Every number in full, with its provenance.</p>'
        + "".join(_case_details(r) for r in results)
        + "</section>"
    )
    out.append(_skipped_section(results))
    out.append(_environment_section(meta, env))
    if history is not None:
        out.append(_history_section(history, missing))
    out.append("</body></html>\n")
    return scrub("\n".join(out))  # the figures' text too: a lone surrogate cannot be written as UTF-8


def write_html(
    directory: str | Path,
    benchmarks: Sequence[dict] = (),
    baseline: dict | None = None,
    history: History | None = None,
    target: str | Path | None = None,
) -> Path:
    """Write ``report.html`` beside the ``report.json`` in ``directory`` (read back from that file), atomically."""
    directory = Path(directory)
    doc = load_report(directory) if (directory / "report.json").is_file() else {"results": []}
    return atomic_write_text(
        Path(target) if target else directory / "report.html", render_html(doc, benchmarks, baseline, history)
    )
