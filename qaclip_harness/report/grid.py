"""Combined result tables laid out like Chinese-CLIP's Results.md: rows models, columns datasets, one metric.

Datasets whose card names a ``report_table`` (the ten ELEVATER sets) are shown in one such grid
instead of a table each. A cell is the measured top-1 with its delta from the published value,
``!`` when outside tolerance, ``*`` when the case is report-only (never gated; the reason is
listed under the grid); a measured-only row (no published value) shows the measured value alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qaclip_harness.report.escape import markdown_cell, markdown_inline, number_text

GRID_TITLES = {"elevater": "Zero-shot classification, ELEVATER (Chinese), top-1"}
GRID_METRIC = "top1"


@dataclass
class Grid:
    """One combined table: its title, dataset columns (name, display) and the results in it."""

    name: str
    title: str
    columns: list[tuple[str, str]]
    results: list = field(default_factory=list)


def _cards() -> dict[str, Any]:
    try:
        from qaclip_harness.data.catalog import all_datasets

        return {c.name: c for c in all_datasets()}
    except Exception:  # noqa: BLE001 - a report must render even if the cards cannot be read
        return {}


def split_grids(results: list) -> tuple[list[Grid], list]:
    """(grids, the other results): results of datasets with a ``report_table`` go into that table's grid."""
    cards = _cards()
    grids: dict[str, Grid] = {}
    rest = []
    for r in results:
        card = cards.get(r.dataset)
        table = getattr(card, "report_table", None)
        if not table:
            rest.append(r)
            continue
        if table not in grids:
            cols = [(c.name, c.display) for c in cards.values() if getattr(c, "report_table", None) == table]
            grids[table] = Grid(table, GRID_TITLES.get(table, table), cols)
        grids[table].results.append(r)
    return list(grids.values()), rest


def _model_order(models: list[str]) -> list[str]:
    try:
        from qaclip_core.registry import all_cards

        order = {c.name: i for i, c in enumerate(all_cards(include_test_only=True))}
    except Exception:  # noqa: BLE001
        order = {}
    return sorted(set(models), key=lambda m: (order.get(m, len(order)), m))


def cell(r) -> str:
    """The grid cell of one result."""
    if r is None:
        return ""
    check = next((c for c in r.checks if c["metric"] == GRID_METRIC), None)
    if check is not None:
        flag = "*" if r.status == "reported" else ("" if check.get("ok") else "!")
        return f"{number_text(check.get('measured'), '.1f')} ({number_text(check.get('delta'), '+.1f')}){flag}"
    if r.status == "reported" and GRID_METRIC in r.measured:
        return number_text(r.measured[GRID_METRIC], ".1f")
    return {"skipped": "skipped", "error": "error"}.get(r.status, r.status)


def _rows(grid: Grid) -> tuple[list[str], list[list[str]]]:
    by_key = {(r.model, r.dataset): r for r in grid.results}
    present = {r.dataset for r in grid.results}
    columns = [(name, display) for name, display in grid.columns if name in present]
    header = ["model", *(display for _, display in columns)]
    rows = [
        [m, *(cell(by_key.get((m, name))) for name, _ in columns)]
        for m in _model_order([r.model for r in grid.results])
    ]
    return header, rows


def notes(grid: Grid) -> list[str]:
    """Lines under a grid: why report-only columns are not gated, errors, and why cells were skipped."""
    display = dict(grid.columns)
    out: list[str] = []
    seen = set()
    for r in grid.results:
        if r.status == "reported" and r.checks and r.dataset not in seen:
            seen.add(r.dataset)
            name, why = display.get(r.dataset, r.dataset), r.reason.split("; ")[0]
            out.append(f"* {why} (not gated)" if why.startswith(name) else f"* {name}: {why} (not gated)")
    measured = sorted({r.model for r in grid.results if r.status == "reported" and not r.checks and r.measured})
    if measured:
        out.append(f"no published value (measured only): {', '.join(measured)}")
    out.extend(f"error: {r.dataset}-{r.model}: {r.reason}" for r in grid.results if r.status == "error")
    skipped: dict[str, int] = {}
    for r in grid.results:
        if r.status == "skipped":
            first = r.reason.split("; ")[0]
            skipped[first] = skipped.get(first, 0) + 1
    out.extend(f"skipped ({n}): {reason}" for reason, n in skipped.items())
    return out


LEGEND = (
    "cells: measured (measured - published); ! outside tolerance; * report-only (not gated); "
    "a value alone: measured, no published value"
)


def render_grid_text(grid: Grid) -> str:
    """The grid as an aligned plain-text table with its notes."""
    header, rows = _rows(grid)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    out = [f"{grid.title}  ({LEGEND})", fmt(header), *(fmt(r) for r in rows)]
    out.extend(f"  {n}" for n in notes(grid))
    return "\n".join(out) + "\n"


def render_grid_markdown(grid: Grid) -> str:
    """The grid as a Markdown section."""
    header, rows = _rows(grid)
    out = [
        f"## {markdown_inline(grid.title)}",
        "",
        "| " + " | ".join(markdown_inline(c) for c in header) + " |",
        "|" + "---|" * len(header),
    ]
    out.extend("| " + " | ".join(markdown_cell(c) for c in r) + " |" for r in rows)
    out.append("")
    out.append(markdown_inline(LEGEND[0].upper() + LEGEND[1:] + "."))
    out.append("")
    found = notes(grid)
    out.extend(f"- {markdown_inline(n[2:] if n.startswith('* ') else n)}" for n in found)
    if found:
        out.append("")
    return "\n".join(out)


def grid_of(results: list, name: str) -> Grid | None:
    """The grid ``name`` of ``results``, if any of them belong to it."""
    return next((g for g in split_grids(results)[0] if g.name == name), None)
