"""The files a suite run writes at its end besides report.json and report.md: report.html and, with --history, history.md."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from qaclip_core.errors import QAClipError
from qaclip_harness.files import atomic_write_text
from qaclip_harness.report.history import build, load_run, load_runs, render_markdown
from qaclip_harness.report.html import write_html


def write_html_and_history(
    report: Path,
    run_benchmark: dict | None,
    baseline: dict | None,
    history_dir: Path | None,
    warn: Callable[[str], None],
) -> list[Path]:
    """report.html (with this run's pytest-benchmark JSON and the compared baseline), and history.md with --history.

    A damaged history folder costs the history section (``warn`` says why), never the report.
    """
    history, written = None, []
    if history_dir is not None:
        try:
            earlier = load_runs([history_dir]) if history_dir.is_dir() else []
            history = build([*earlier, load_run(report)])
        except QAClipError as e:
            warn(f"qaclip: --history {history_dir}: {e}; report.html has no history section")
        else:
            written.append(atomic_write_text(report / "history.md", render_markdown(history)))
    return [write_html(report, [run_benchmark] if run_benchmark else [], baseline, history), *written]
