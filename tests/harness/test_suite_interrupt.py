"""Ctrl-C in the suite: the partial report says the run was interrupted and lists the case that was running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Raised where a Ctrl-C lands: in the main thread, in the middle of the second case's call.
PLUGIN = """
import pytest

calls = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    calls.append(item.nodeid)
    if len(calls) == 2:
        raise KeyboardInterrupt
"""


def test_an_interrupted_run_reports_what_ran_and_what_was_cut(tmp_path):
    (tmp_path / "interrupt_second_case.py").write_text(PLUGIN, encoding="utf-8")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "QACLIP_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    env = {k: v for k, v in env.items() if k not in ("QACLIP_REPORT", "QACLIP_GOLDEN_DIR")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-p",
            "interrupt_second_case",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            "fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny",
            "-m",
            "not throughput",
            "--report",
            str(tmp_path / "report"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]  # pytest's exit status for an interrupted run
    doc = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert doc["meta"]["interrupted"] is True
    status = {r["dataset"]: r["status"] for r in doc["results"]}
    assert sorted(status.values()) == ["interrupted", "passed"], status
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "The run was interrupted" in md and "interrupted (Ctrl-C) while running" in md
    assert "the run was interrupted" in out.stdout
