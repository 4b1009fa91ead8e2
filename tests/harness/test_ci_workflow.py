"""The example GPU-runner workflow names only commands, tox envs, options and files that exist."""
from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "gate.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _runs(workflow: dict):
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                yield name, step["run"]


def _tox_envs() -> set:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "tox.ini")
    return {s.split(":", 1)[1] for s in cfg.sections() if s.startswith("testenv:")}


def _words(script: str):
    # join continued lines, drop shell syntax, split like a shell
    text = re.sub(r"\\\n", " ", script)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield from shlex.split(line.replace(";", " ; "), comments=True)


def test_jobs_and_runners(workflow):
    assert set(workflow["jobs"]) == {"tests", "gpu-gate"}
    labels = workflow["jobs"]["gpu-gate"]["runs-on"]
    assert "self-hosted" in labels and "gpu" in labels
    assert workflow["jobs"]["tests"]["runs-on"] == "ubuntu-latest"


def test_every_tox_env_and_file_named_exists(workflow):
    envs = _tox_envs()
    named_envs = []
    for _, script in _runs(workflow):
        words = list(_words(script))
        named_envs += [words[i + 1] for i, w in enumerate(words) if w == "-e"]
        for w in words:
            if re.match(r"^(\.ci|tools)/", w):
                assert (REPO / w).exists(), f"{WORKFLOW.name} runs {w}, which does not exist"
    assert named_envs and set(named_envs) <= envs, f"unknown tox envs {set(named_envs) - envs}"


def test_every_pytest_option_named_exists(workflow):
    help_text = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=REPO,
                               capture_output=True, text=True, timeout=300).stdout
    options = set()
    for _, script in _runs(workflow):
        if "tox exec" in script:
            continue  # a qaclip command in the suite's environment, not pytest: test_every_qaclip_command_named_exists
        tail = script.split(" -- ", 1)[1] if " -- " in script else ""
        options |= {w.split("=")[0] for w in _words(tail) if w.startswith("--") and w != "--"}
    assert {"--require-data", "--report", "--junit-xml", "--benchmark-compare-fail"} <= options
    unknown = [o for o in sorted(options) if not re.search(rf"(^|[\s,]){re.escape(o)}([\s=,]|$)", help_text, flags=re.M)]
    assert not unknown, f"{WORKFLOW.name} passes options pytest does not know: {unknown}"


def test_environment_variables_are_ones_the_suite_reads(workflow):
    options = (REPO / "qaclip_harness" / "suite" / "options.py").read_text(encoding="utf-8")
    hub = (REPO / "qaclip_core" / "pretrained.py").read_text(encoding="utf-8")
    for name in workflow["jobs"]["gpu-gate"]["env"]:
        if name.startswith("QACLIP_"):
            assert f'"{name}"' in options or name in hub, f"{name} is read by neither the suite nor the hub"


def test_reports_are_uploaded_and_summarised(workflow):
    upload = next(s for s in workflow["jobs"]["gpu-gate"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    paths = upload["with"]["path"]
    for name in ("report.md", "report.json", "junit.xml", "benchmark.json"):
        assert name in paths
    assert upload.get("if") == "always()"
    # report.md reaches the job summary through the suite itself (GITHUB_STEP_SUMMARY), passed on by tox
    assert "GITHUB_STEP_SUMMARY" in (REPO / "tox.ini").read_text(encoding="utf-8")
    assert "GITHUB_STEP_SUMMARY" in (REPO / "benchmarks" / "plugin.py").read_text(encoding="utf-8")


def test_every_qaclip_command_named_exists(workflow):
    """``tox exec -e ENV -- python -m qaclip_harness SUB ...``: the env, the subcommand and its options exist."""
    named = []
    for _, script in _runs(workflow):
        for line in re.sub(r"\\\n", " ", script).splitlines():
            if "tox exec" not in line:
                continue
            words = shlex.split(line)
            sub = words[words.index("qaclip_harness") + 1]
            help_text = subprocess.run([sys.executable, "-m", "qaclip_harness", sub, "--help"], cwd=REPO, capture_output=True,
                                       text=True, timeout=300)
            assert help_text.returncode == 0, f"{WORKFLOW.name} runs qaclip {sub}, which does not exist"
            unknown = [w for w in words if w.startswith("--") and w != "--" and not re.search(rf"(^|\s){re.escape(w)}\b",
                                                                                          help_text.stdout, flags=re.M)]
            assert not unknown, f"qaclip {sub} knows no {unknown}"
            named.append(sub)
    assert sorted(named) == ["history", "keep-run"]


def test_the_page_and_the_history_are_published(workflow):
    steps = workflow["jobs"]["gpu-gate"]["steps"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "reports/report.html" in upload["with"]["path"] and "reports/history.md" in upload["with"]["path"]
    history = next(s for s in steps if "qaclip_harness history" in s.get("run", ""))
    keep = next(s for s in steps if "qaclip_harness keep-run" in s.get("run", ""))
    # every run reads the history (a failed one too: its page is what a reviewer opens); only main writes it
    assert history["if"] == "always()" and "GITHUB_STEP_SUMMARY" in history["run"]
    assert keep["if"].startswith("github.ref == 'refs/heads/main'")
    assert history["env"]["HISTORY"] == keep["env"]["HISTORY"]
    assert steps.index(history) > next(i for i, s in enumerate(steps) if "-e throughput" in s.get("run", ""))
    assert steps.index(keep) > steps.index(history)
