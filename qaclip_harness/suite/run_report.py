"""The run's report at the end of a session: report.json and report.md, also for a run cut short by Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qaclip_harness.report.tables import CaseResult, write_reports
from qaclip_harness.suite.cases import report_identity
from qaclip_harness.suite.options import SuiteOptions
from qaclip_harness.suite.session import resolved_device

INTERRUPTED = "interrupted"


def interrupted_result(item: pytest.Item, options: SuiteOptions) -> CaseResult | None:
    """The report row of the suite case a Ctrl-C stopped (None for a test that is not a suite case)."""
    ident = report_identity(item)
    if ident is None:
        return None
    return CaseResult(
        precision=options.precision,
        backend=options.backend,
        status=INTERRUPTED,
        reason="the run was interrupted (Ctrl-C) while this case ran",
        **ident,
    )


def write_run_report(
    results: list[CaseResult], options: SuiteOptions, interrupted: bool = False, shard: dict | None = None
) -> list[Path]:
    """Write report.json and report.md into ``options.report`` (atomically; OutputError when that fails).

    ``shard``: the ``--shard`` record (K/N, the whole selection's case names), kept as ``meta.shard``.
    """
    from qaclip_harness.environment import environment

    meta = {
        "precision": options.precision,
        "device": options.device,
        "backend": options.backend,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "batch_size": options.batch_size,
        "evaluate_any_split": options.evaluate_any_split,
    }
    if shard is not None:
        meta["shard"] = shard
    if interrupted:
        meta["interrupted"] = True
    assert options.report is not None  # called only with --report
    return write_reports(results, options.report, meta, environment=environment(resolved_device(options.device)))
