"""Progress of the suite's long stages on pytest's terminal, visible without ``-s``.

pytest captures a test's output, so a tqdm bar written by the evaluation would only appear
after the case. Progress goes through the terminal reporter instead, with capturing suspended
for the write, as pytest's own live logging does: on a terminal one line is redrawn in place
(items done, rate, ETA); in a log (CI) one line is written when each stage ends, and every five
minutes while a long stage runs.
"""

from __future__ import annotations

import contextlib

import pytest

from qaclip_harness.progress import ProgressFactory, line_progress


def terminal_progress(config: pytest.Config) -> ProgressFactory | None:
    """A progress factory that writes to this session's terminal, or None (xdist workers, -q -q...)."""
    if hasattr(config, "workerinput"):
        return None  # workers have no terminal; the controller prints their results
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return None
    live = bool(reporter.isatty)
    started: set[bool] = set()

    def write(text: str, final: bool) -> None:
        ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        with ctx:
            if live:
                if not started:
                    reporter.write_line("")  # leave the test's id line intact above the progress line
                    started.add(True)
                reporter.rewrite("  " + text, erase=True)
                if final:
                    reporter.write("\n")
                    started.clear()
            else:
                reporter.write_line("  " + text)

    return line_progress(write, live)
