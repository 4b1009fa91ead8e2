"""``qaclip history DIR...`` and ``qaclip keep-run RUN STORE``: the history of every number, and keeping a run for it."""

from __future__ import annotations

import sys

from qaclip_core.errors import QAClipError
from qaclip_harness.files import atomic_write_text


def run_history(args) -> int:
    """Print what moved between the last two runs; write the report page with every number's history."""
    from qaclip_harness.report.escape import json_text, terminal
    from qaclip_harness.report.history import build, load_runs, render_markdown, render_text, to_json
    from qaclip_harness.report.html import write_html

    try:
        history = build(load_runs(args.runs))
        current = history.runs[-1]
        if args.html:
            # the current run's page; the run before is the throughput baseline
            baseline = (
                history.runs[-2].benchmarks[-1] if len(history.runs) > 1 and history.runs[-2].benchmarks else None
            )
            path = write_html(current.path, current.benchmarks, baseline, history, target=args.html)
            print(f"written: {path}", file=sys.stderr)
        if args.markdown:
            path = atomic_write_text(args.markdown, render_markdown(history, args.limit))
            print(f"written: {path}", file=sys.stderr)
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # names read from runs reach a terminal: no control sequence from them is obeyed
    print(json_text(to_json(history)) if args.json else terminal(render_text(history, args.limit)), end="")
    return 0


def run_keep(args) -> int:
    """Copy a run folder into a history folder."""
    from qaclip_harness.report.history import keep_run

    try:
        path = keep_run(args.run, args.store, args.name, args.keep_last)
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kept: {path}")
    return 0
