"""The sharded sweep workflow (.github/workflows/sweep.yml): actionlint and zizmor (as for gate.yml) report nothing
unexplained; its shards are the matrix, its merge job joins every shard's report with qaclip merge-reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import test_ci_workflow as ci

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / ".github" / "workflows" / "sweep.yml"


@pytest.fixture
def on_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate workflow's linter helpers, pointed at sweep.yml."""
    monkeypatch.setattr(ci, "WORKFLOW", SWEEP)


@pytest.fixture(scope="module")
def sweep() -> dict:
    return yaml.safe_load(SWEEP.read_text(encoding="utf-8"))


def test_actionlint_finds_nothing(on_sweep):
    ci.test_actionlint_finds_nothing()
    ci.test_every_actionlint_suppression_says_why()


def test_zizmor_finds_nothing_and_every_ignore_says_why(on_sweep):
    ci.test_zizmor_finds_nothing_and_every_ignore_says_why()


def test_pinned_read_only_no_credentials(on_sweep, sweep):
    ci.test_every_action_is_pinned_to_a_commit_with_its_release_named(sweep)
    ci.test_the_token_only_reads_and_checkouts_keep_no_credentials(sweep)
    triggers = sweep.get(True, sweep.get("on", {}))  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"workflow_dispatch", "schedule"}  # never a pull request's code on these runners


def test_the_shards_are_the_matrix_and_the_merge_takes_them_all(sweep):
    shard, merge = sweep["jobs"]["shard"], sweep["jobs"]["merge"]
    matrix = shard["strategy"]["matrix"]["shard"]
    assert matrix == list(range(1, len(matrix) + 1)) and len(matrix) > 1  # K = 1..N, each once
    assert shard["env"]["QACLIP_SHARD"] == "${{ matrix.shard }}/${{ strategy.job-total }}"  # N is the matrix length
    assert shard["strategy"]["fail-fast"] is False  # a red shard does not cancel the others
    assert "gpu" in shard["runs-on"]
    upload = next(s for s in shard["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "qaclip-shard-${{ matrix.shard }}" and upload["with"]["path"] == "reports/"
    assert upload["if"] == "always()"
    assert merge["needs"] == "shard" and merge["if"] == "always()"
    download = next(s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact@"))
    assert download["with"] == {"pattern": "qaclip-shard-*", "path": "shards"}
    run = next(s["run"] for s in merge["steps"] if "merge-reports" in s.get("run", ""))
    assert "merge-reports shards/qaclip-shard-* --out reports" in run


def test_commands_tox_envs_options_and_variables_exist(sweep):
    envs = ci._tox_envs()
    runs = [step["run"] for job in sweep["jobs"].values() for step in job["steps"] if "run" in step]
    named = [w[i + 1] for w in (list(ci._words(r)) for r in runs) for i, x in enumerate(w) if x == "-e"]
    assert named and set(named) <= envs
    pytest_help = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    for script in runs:
        if " -- " not in script or "tox exec" in script:
            continue
        for word in ci._words(script.split(" -- ", 1)[1]):
            if word.startswith("--"):
                assert re.search(rf"(^|[\s,]){re.escape(word.split('=')[0])}([\s=,]|$)", pytest_help, flags=re.M), word
    merge_help = subprocess.run(
        [sys.executable, "-m", "qaclip_harness", "merge-reports", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    assert "--out" in merge_help
    options = (REPO / "qaclip_harness" / "suite" / "options.py").read_text(encoding="utf-8")
    for name in sweep["jobs"]["shard"]["env"]:
        if name.startswith("QACLIP_") and name != "QACLIP_CACHE":  # QACLIP_CACHE: the package cache (qaclip_core)
            assert f'"{name}"' in options, name
