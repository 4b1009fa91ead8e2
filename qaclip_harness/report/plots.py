"""The report's figures, drawn by matplotlib (the optional ``report`` extra) and returned as SVG text to inline.

Every function takes plain numbers and returns one ``<svg>`` element whose ids are unique to it,
so several can sit in one HTML page. Text is drawn as paths: the page needs no font.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import warnings
from collections.abc import Sequence

from qaclip_harness.report.escape import terminal

INSTALL_HINT = "pip install 'qaclip-core[report]'"
COLOURS = {
    "ok": "#2a7d2a",
    "near": "#d18a00",
    "fail": "#c62828",
    "band": "#dfe9df",
    "ours": "#1f5fa8",
    "reference": "#8c8c8c",
    "peer": "#d18a00",
    "baseline": "#000000",
}
NEAR = 0.8  # a value beyond this share of its tolerance is drawn as near the edge
LABEL_MAX = 60  # characters of a label or title drawn (every glyph is a path: a long name would cost seconds)
_counter = itertools.count()


def missing() -> str | None:
    """None when matplotlib can be imported, else one line saying how to get the plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"plots need matplotlib, the 'report' extra ({INSTALL_HINT}): {e}"
    return None


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}), warnings.catch_warnings():
        # long labels can leave no room for the axes: the figure is still drawn, the warning says nothing more
        warnings.filterwarnings("ignore", message="constrained_layout not applied", category=UserWarning)
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    prefix = f"f{next(_counter)}-"
    ids = set(re.findall(r'\bid="([^"]+)"', text))
    if ids:  # scope every id (glyphs, clip paths) to this figure: the page holds several
        pattern = re.compile(
            r'(\bid="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)) + r')(?=[")])'
        )
        text = pattern.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    return text


def _plain(text: object, limit: int = LABEL_MAX) -> str:
    """Text drawn as it is, at most ``limit`` characters (the tables show it whole): matplotlib reads a string with
    two unescaped ``$`` as math, and fails on bad math; control characters are shown escaped."""
    text = terminal(text)  # no lone surrogate (the font code refuses it) and no control character
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _state(ratio: float, ok: bool) -> str:
    if not ok:
        return "fail"
    return "near" if abs(ratio) >= NEAR else "ok"


def tolerance_plot(title: str, points: Sequence[tuple[str, str, float, bool]]) -> str:
    """(model, metric, delta / tolerance, ok) per point: each model a row, the +-1 tolerance band shaded."""
    models = list(dict.fromkeys(p[0] for p in points))
    metrics = list(dict.fromkeys(p[1] for p in points))
    markers = "os^Dv<>pPX*h"
    span = max([1.5] + [min(abs(p[2]) * 1.15, 5.0) for p in points])
    fig = _figure(8.0, max(1.2 + 0.32 * len(models), 0.6 + 0.16 * len(metrics)))  # room for the legend
    ax = fig.add_subplot()
    ax.axvspan(-1, 1, color=COLOURS["band"], zorder=0)
    ax.axvline(0, color="#555555", linewidth=0.8, zorder=1)
    for j, metric in enumerate(metrics):
        mine = [p for p in points if p[1] == metric]
        # a metric's markers sit a little apart vertically so equal values stay visible
        offset = (j - (len(metrics) - 1) / 2) * min(0.6 / max(len(metrics), 1), 0.12)
        xs = [max(-span, min(span, p[2])) for p in mine]
        ys = [models.index(p[0]) + offset for p in mine]
        colours = [COLOURS[_state(p[2], p[3])] for p in mine]
        ax.scatter(xs, ys, c=colours, marker=markers[j % len(markers)], s=28, zorder=3, edgecolors="none")
    ax.set_yticks(range(len(models)), [_plain(m) for m in models])
    ax.set_ylim(len(models) - 0.5, -0.5)
    ax.set_xlim(-span, span)
    ax.set_xlabel(f"(measured - published) / tolerance; orange: beyond {NEAR:.0%} of it, red: outside", fontsize=8)
    ax.set_title(_plain(title, 2 * LABEL_MAX), loc="left", fontsize=10)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], linestyle="", marker=markers[j % len(markers)], color="#444444", label=_plain(m))
        for j, m in enumerate(metrics)
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _svg(fig)


def _log_bars(fig, ax, labels: Sequence[str], xlabel: str, title: str) -> str:
    """Finish a horizontal bar chart on a log x axis, one labelled row per bar, the first at the top, as SVG."""
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), [_plain(label) for label in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(_plain(title, 2 * LABEL_MAX), loc="left", fontsize=10)
    return _svg(fig)


def drift_plot(title: str, rows: Sequence[tuple[str, float, float, bool]]) -> str:
    """(label, measured drift, tolerance, ok) per row on a log scale: a bar to the drift, a mark at the tolerance."""
    positive = [v for r in rows for v in r[1:3] if v and v > 0]
    floor = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-12
    fig = _figure(8.0, 1.1 + 0.3 * len(rows))
    ax = fig.add_subplot()
    for i, (_label, measured, tolerance, ok) in enumerate(rows):
        value = max(abs(measured), floor)
        ratio = abs(measured) / tolerance if tolerance else 0.0
        ax.barh(i, value - floor, left=floor, height=0.6, color=COLOURS[_state(ratio, ok)], zorder=2)
        ax.plot([tolerance, tolerance], [i - 0.4, i + 0.4], color=COLOURS["baseline"], linewidth=2, zorder=3)
        if measured == 0:
            ax.text(floor * 1.2, i, "0", va="center", fontsize=7)
    return _log_bars(fig, ax, [r[0] for r in rows], "drift (log scale); black mark: tolerance", title)


def throughput_plot(title: str, rows: Sequence[tuple[str, str, float, float | None]]) -> str:
    """(label, role, per second, baseline per second or None) per row, log scale; the baseline as a black mark."""
    fig = _figure(8.0, 1.1 + 0.28 * len(rows))
    ax = fig.add_subplot()
    for i, (_, role, speed, base) in enumerate(rows):
        ax.barh(i, speed, height=0.6, color=COLOURS.get(role, COLOURS["peer"]), zorder=2)
        if base:
            ax.plot([base, base], [i - 0.4, i + 0.4], color=COLOURS["baseline"], linewidth=2, zorder=3)
    return _log_bars(
        fig,
        ax,
        [r[0] for r in rows],
        "per second (log scale); blue: qaclip_core, grey: cn_clip, orange: peers; black mark: baseline",
        title,
    )


def history_plot(
    title: str,
    runs: Sequence[str],
    lines: dict[str, list[float | None]],
    ylabel: str,
    band: tuple[float, float] | None = None,
    log: bool = False,
) -> str:
    """One line per number over ``runs`` (None where a run lacks it); ``band`` shades the allowed range."""
    fig = _figure(8.0, 2.6)
    ax = fig.add_subplot()
    if band is not None:
        ax.axhspan(band[0], band[1], color=COLOURS["band"], zorder=0)
    xs = list(range(len(runs)))
    for name, values in lines.items():
        pts = [(x, v) for x, v in zip(xs, values) if v is not None and (not log or v > 0)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1, label=_plain(name))
    if log:
        ax.set_yscale("log")
    ax.set_xticks(xs, [_plain(r, 14) for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(_plain(title, 2 * LABEL_MAX), loc="left", fontsize=10)
    if lines:
        ax.legend(fontsize=6, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _svg(fig)
