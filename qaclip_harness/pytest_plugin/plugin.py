"""The suite's pytest hooks: options, the session fixture, case ordering, the report at the end.

Registered when the suite is enabled (``--qaclip``, or a conftest mounting it: see the package's
docstring). Everything else (the session's state, the cases, their results) lives in
:mod:`qaclip_harness.suite`; the project's own cards, datasets and expected numbers are read at
configure time (:mod:`qaclip_harness.suite.project`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pytest

from qaclip_core.errors import QAClipError
from qaclip_harness.expected import check_against_cards, check_against_catalog
from qaclip_harness.files import OutputError
from qaclip_harness.report.tables import CaseResult, render_text
from qaclip_harness.suite.cases import all_expected, case_of, expected_dir, report_identity
from qaclip_harness.suite.options import CPU_OPT_IN, SuiteOptions, add_options, option_source, validated_options
from qaclip_harness.suite.project import MARKERS, add_project_options, configure_project
from qaclip_harness.suite.reports import write_html_and_history
from qaclip_harness.suite.results import error_reason, junit_properties, skip_reason
from qaclip_harness.suite.run_report import interrupted_result, write_run_report
from qaclip_harness.suite.session import Suite, runs_on_cuda
from qaclip_harness.suite.shard import SHARD_OUTPUT, ShardPlan, apply_shard, plan_from

_SUITE_KEY = pytest.StashKey[Suite]()
_OPTIONS_KEY = pytest.StashKey[SuiteOptions]()
_RESULTS_KEY = pytest.StashKey[dict[str, CaseResult]]()
_LEFT_OUT_KEY = pytest.StashKey[list[tuple]]()  # (marker, count) of the CPU throughput groups left out
_BENCH_KEY = pytest.StashKey[
    dict[str, dict]
]()  # pytest-benchmark's JSON of this run ("run") and the compared one ("baseline")
_RUNNING_KEY = pytest.StashKey[Optional[pytest.Item]]()  # the case running now (the one a Ctrl-C interrupts)
_WRITTEN_KEY = pytest.StashKey[list[str]]()  # lines saying where the report went, or why it could not
_WORKER_OUTPUT = "qaclip_results"
_PLAN_KEY = pytest.StashKey[ShardPlan]()  # --select-models/--select-datasets and --shard (qaclip_harness.suite.shard)


def pytest_addoption(parser):
    add_options(parser)
    add_project_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.stash[_RESULTS_KEY] = {}
    config.stash[_LEFT_OUT_KEY] = []
    config.stash[_BENCH_KEY] = {}
    config.stash[_RUNNING_KEY] = None
    config.stash[_WRITTEN_KEY] = []
    for marker in MARKERS:  # a project's --strict-markers knows the suite's marks
        config.addinivalue_line("markers", marker)
    try:
        configure_project(config)  # the project's cards and datasets registered, its expected files named
        worker = getattr(config, "workerinput", None)
        config.stash[_OPTIONS_KEY] = o = validated_options(
            config.getoption,
            worker_count=(worker or {}).get("workercount", 1),
            is_worker=worker is not None,
            source=option_source(config.option),
        )
        config.stash[_PLAN_KEY] = plan_from(config.getoption, option_source(config.option))
        # the hub reads these at call time (and xdist workers inherit them)
        if o.lock_file is not None:
            os.environ["QACLIP_LOCK_FILE"] = str(o.lock_file)
        if o.verify:
            os.environ["QACLIP_VERIFY"] = "1"
        if not expected_dir().is_dir():
            raise QAClipError(f"QACLIP_EXPECTED_DIR {str(expected_dir())!r}: no such folder of expected YAML files")
        if not all_expected():  # a malformed expected file stops the run here, naming the file and key
            raise QAClipError(f"QACLIP_EXPECTED_DIR {str(expected_dir())!r}: holds no expected *.yaml files")
        check_against_catalog(all_expected())
        check_against_cards(all_expected())
    except QAClipError as e:
        raise pytest.UsageError(str(e)) from None
    # plain -n N would scatter a model's cases over workers and load it N times
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in ("no", "load"):
        config.option.dist = "loadgroup"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # A Ctrl-C raises out of the case without a report: remember which case was running.
    item.config.stash[_RUNNING_KEY] = item
    result = yield
    item.config.stash[_RUNNING_KEY] = None
    return result


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    results = config.stash.get(_RESULTS_KEY, {})
    running = config.stash.get(_RUNNING_KEY, None)
    if interrupted and running is not None and running.nodeid not in results and _OPTIONS_KEY in config.stash:
        result = interrupted_result(running, config.stash[_OPTIONS_KEY])
        if result is not None:
            results[running.nodeid] = result
    plan = config.stash.get(_PLAN_KEY, None)
    if hasattr(config, "workeroutput"):
        config.workeroutput[_WORKER_OUTPUT] = json.dumps({k: asdict(r) for k, r in results.items()})
        if plan is not None and plan.record is not None:
            config.workeroutput[SHARD_OUTPUT] = json.dumps(plan.record)
        return
    if plan is not None and plan.empty_shard and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # a shard the split left empty did its part: nothing
    options = config.stash.get(_OPTIONS_KEY, None)
    shard = plan.record if plan is not None else None
    if options is None or options.report is None or not (results or (shard and not config.option.collectonly)):
        return
    ordered = sorted(results.values(), key=lambda r: (r.dataset, r.model))
    try:
        paths = write_run_report(ordered, options, interrupted=interrupted, shard=shard)
    except OutputError as e:  # a full disk: one line naming the path, and the run fails
        config.stash[_WRITTEN_KEY] = [f"qaclip: the report was not written: {e}"]
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    config.stash[_WRITTEN_KEY] = [f"report written to {path}" for path in paths]
    _append_step_summary(paths[1])


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown when xdist is not installed
def pytest_testnodedown(node, error):
    # runs on the xdist controller: merge the worker's results into one report
    data = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if data:
        node.config.stash[_RESULTS_KEY].update({k: CaseResult(**r) for k, r in json.loads(data).items()})
    shard = getattr(node, "workeroutput", {}).get(SHARD_OUTPUT)
    plan = node.config.stash.get(_PLAN_KEY, None)
    if shard and plan is not None and plan.record is None:  # the controller collects nothing: a worker's split
        plan.record = json.loads(shard)


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hooks: report.html shows the run's throughput
def pytest_benchmark_update_json(config, benchmarks, output_json):
    config.stash[_BENCH_KEY]["run"] = output_json


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    config.stash[_BENCH_KEY]["baseline"] = (
        compared_benchmark  # the last compared file, as --benchmark-compare-fail uses
    )


@pytest.fixture(scope="session")
def suite(request) -> Iterator[Suite]:
    """The session's :class:`~qaclip_harness.suite.session.Suite`."""
    config = request.config
    s = Suite(config, config.stash[_OPTIONS_KEY], config.stash[_RESULTS_KEY])
    config.stash[_SUITE_KEY] = s
    yield s
    s.close()


def pytest_runtest_setup(item):
    # workers share the machine, so their timings would measure each other
    if item.get_closest_marker("throughput") and getattr(item.config, "workerinput", None) is not None:
        pytest.skip(
            "throughput is not timed under pytest-xdist (-n): run `pytest benchmarks -m throughput -p no:xdist`"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # Every collected suite case appears in the report: one that ended without recording a
    # result (a crash while resolving its checkpoint, a fixture error...) is recorded here.
    ident = report_identity(item)
    results = item.config.stash[_RESULTS_KEY]
    if ident is not None and item.nodeid not in results and (report.when == "call" or not report.passed):
        if report.skipped:
            status, reason = "skipped", skip_reason(report)
        else:
            status, reason = "error", error_reason(call)
        options = item.config.stash[_OPTIONS_KEY]
        result = CaseResult(precision=options.precision, backend=options.backend, status=status, reason=reason, **ident)
        results[item.nodeid] = result
        item.user_properties.extend(junit_properties(result))
    return report


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: count only what would have run
def pytest_collection_modifyitems(session, config, items):
    plan = config.stash[_PLAN_KEY]
    plan.selection.apply(items, config)  # exact names, before anything counts what is left
    # Off CUDA, CPU throughput of the large towers (minutes per case) and of the other backends'
    # twins of the real architectures (their export or conversion) is opt-in: the default suite fits
    # a CPU job. Each group left out is named in the summary with its option.
    if not runs_on_cuda(config.stash[_OPTIONS_KEY].device):
        for marker, option, _ in CPU_OPT_IN:
            if config.getoption(option):
                continue
            left = [i for i in items if i.get_closest_marker("throughput") and i.get_closest_marker(marker)]
            if left:
                config.hook.pytest_deselected(items=left)
                ids = {id(i) for i in left}
                items[:] = [i for i in items if id(i) not in ids]
                config.stash[_LEFT_OUT_KEY].append((marker, len(left)))
    apply_shard(plan, items, config)  # after every other selection: the split is of what would run
    # Reproduction cases of one model run back to back, so its weights load once.
    repro = [i for i in items if case_of(i) is not None]
    if repro:
        it = iter(sorted(repro, key=lambda i: case_of(i).model))
        items[:] = [next(it) if case_of(i) is not None else i for i in items]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workeroutput"):
        return  # the controller reports for all workers
    left = dict(config.stash.get(_LEFT_OUT_KEY, []))
    parts = [
        f"{left[marker]} {what}: include them with {option}" for marker, option, what in CPU_OPT_IN if marker in left
    ]
    if parts:
        terminalreporter.write_line(f"qaclip: left out CPU throughput cases: {'; '.join(parts)}")
    plan = config.stash.get(_PLAN_KEY, None)
    if plan is not None and plan.record is not None:
        terminalreporter.write_line(plan.summary())
    results = sorted(config.stash.get(_RESULTS_KEY, {}).values(), key=lambda r: (r.dataset, r.model))
    if not results:
        for line in config.stash.get(_WRITTEN_KEY, []):
            terminalreporter.write_line(line, red=line.startswith("qaclip:"))
        return
    terminalreporter.section("QA-CLIP reproduction report")
    terminalreporter.write_line(render_text(results))
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        terminalreporter.write_line(
            "qaclip: the run was interrupted: the report holds the cases that ran and the one that was interrupted",
            yellow=True,
            bold=True,
        )
    for line in config.stash.get(_WRITTEN_KEY, []):
        terminalreporter.write_line(line, red=line.startswith("qaclip:"))
    options = config.stash.get(_OPTIONS_KEY, None)
    if options is None:
        return
    if (
        options.report is not None
        and (options.report / "report.json").is_file()
        and not any(line.startswith("qaclip:") for line in config.stash.get(_WRITTEN_KEY, []))
    ):
        # report.html and history.md come after pytest-benchmark has saved this run's JSON (its own
        # sessionfinish): they read report.json back and add the throughput records
        bench = config.stash.get(_BENCH_KEY, {})
        paths = write_html_and_history(
            options.report,
            bench.get("run"),
            bench.get("baseline"),
            options.history,
            lambda line: terminalreporter.write_line(line, red=True),
        )
        for path in paths:
            terminalreporter.write_line(f"report written to {path}")
        if len(paths) > 1:
            _append_step_summary(paths[1])  # history.md: what moved since the last kept run
    elif options.report is None and options.history is not None:
        terminalreporter.write_line(
            "qaclip: --history is used only with --report (it draws into report.html): ignored", yellow=True
        )


def _append_step_summary(markdown: Path) -> None:
    """On GitHub Actions, add a Markdown file (report.md, history.md) to the job's summary page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and markdown.is_file():
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown.read_text(encoding="utf-8") + "\n")


def pytest_unconfigure(config):
    # After pytest's own summary line: a run whose every reproduction case skipped evaluated nothing.
    if hasattr(config, "workeroutput"):
        return
    results = list(config.stash.get(_RESULTS_KEY, {}).values())
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if results and reporter is not None and all(r.status == "skipped" for r in results):
        reporter.write_line(
            f"qaclip: all {len(results)} selected reproduction cases were skipped (weights or data missing): "
            "nothing was evaluated",
            yellow=True,
            bold=True,
        )
