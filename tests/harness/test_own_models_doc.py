"""docs/own-models.md runs as written: every file it shows is written, every command it shows is run, in order.

The page's fenced blocks are the script: a block with ``title="PATH"`` is a file of the project (written
verbatim), a ``bash`` block is commands (run by bash with ``set -e``, from a fresh folder, with this
interpreter's ``qaclip`` and ``python`` first on PATH and a package cache of its own). Then what the page
promises is checked: the recorded files with their provenance, the gate's cases green, the CI workflow's
gate command one the page ran.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "own-models.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", flags=re.S | re.M)


def blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(language, file path or None, body) of every fenced block, in order."""
    out = []
    for m in FENCE.finditer(text):
        title = re.search(r'title="([^"]+)"', m.group(2))
        out.append((m.group(1), title.group(1) if title else None, m.group(3)))
    return out


def script(text: str) -> str:
    """The page as one bash script: its files written by heredocs, its commands as they are."""
    lines = ["set -euo pipefail"]
    for lang, path, body in blocks(text):
        if path is not None:
            lines += [
                f"mkdir -p {shlex.quote(str(Path(path).parent))}",
                f"cat > {shlex.quote(path)} <<'QACLIP_DOC_EOF'",
            ]
            lines += [body.rstrip("\n"), "QACLIP_DOC_EOF"]
        elif lang == "bash":
            lines.append(body)
    return "\n".join(lines) + "\n"


def test_the_page_is_a_script_of_files_and_commands():
    text = DOC.read_text(encoding="utf-8")
    found = blocks(text)
    files = [p for _, p, _ in found if p]
    assert files == [
        "pyproject.toml",
        "qaclip/cards.yaml",
        "qaclip/datasets.yaml",
        "my_shop/__init__.py",
        "my_shop/encoder.py",
        ".github/workflows/qaclip.yml",
    ]
    untitled = [lang for lang, p, _ in found if p is None and lang != "bash"]
    assert not untitled, f"blocks that are neither a file nor commands: {untitled}"


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The page, run once from an empty folder."""
    root = tmp_path_factory.mktemp("own-models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        QACLIP_CACHE=str(root / "qaclip-cache"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    out = subprocess.run(
        ["bash", "-c", script(DOC.read_text(encoding="utf-8"))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    return root / "my-shop", out


def test_every_command_of_the_page_succeeds(ran):
    _, out = ran
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]
    assert "Traceback" not in out.stdout + out.stderr


def test_the_numbers_were_recorded_once_with_their_provenance(ran):
    project, _ = ran
    for card in ("my-shop-clip", "my-shop-port"):
        doc = yaml.safe_load(
            (project / "qaclip" / "expected" / f"my-shop-valid-{card}.yaml").read_text(encoding="utf-8")
        )
        rec = doc["recorded"]
        assert doc["models"][card]["gate"] == "recorded" and set(doc["tolerance"]) == {"fp32", "fp16", "bf16"}
        assert set(rec["runs"]) == {"fp32", "fp32-batch", "fp16", "bf16"}  # TF32 exists on CUDA only
        assert rec["checkpoint"]["sha256"] == "dba7ed54d95abb52d8515e93926dccefe4275cf2795abfb618ab1fce17130224"
        assert rec["data"]["counts"] == {"images": 120, "texts": 387} and rec["data"]["split_check"]["ok"]
    # the port is the same weights through other code: the same numbers, to the digit
    clip, port = (
        yaml.safe_load((project / "qaclip" / "expected" / f"my-shop-valid-{c}.yaml").read_text(encoding="utf-8"))
        for c in ("my-shop-clip", "my-shop-port")
    )
    assert clip["models"]["my-shop-clip"]["recorded"] == port["models"]["my-shop-port"]["recorded"]


def test_the_gate_ran_the_projects_cases_green(ran):
    project, _ = ran
    results = json.loads((project / "reports" / "report.json").read_text(encoding="utf-8"))["results"]
    status = {f"{r['dataset']}-{r['model']}": r["status"] for r in results}
    assert status["my-shop-valid-my-shop-clip"] == "passed" and status["my-shop-valid-my-shop-port"] == "passed"
    assert status["example-my-shop-port"] == "passed"
    assert {r["model"] for r in results} == {"my-shop-clip", "my-shop-port"}  # -k my-shop: the project's cards only
    gated = next(r for r in results if r["dataset"] == "my-shop-valid" and r["model"] == "my-shop-clip")
    assert {c["metric"] for c in gated["checks"]} >= {"t2i_r1", "i2t_r10", "mean_recall"}


def test_the_ci_workflow_runs_the_gate_the_page_ran(ran):
    project, _ = ran
    workflow = yaml.safe_load((project / ".github" / "workflows" / "qaclip.yml").read_text(encoding="utf-8"))
    runs = [step.get("run", "") for step in workflow["jobs"]["gate"]["steps"]]
    gate = next(r for r in runs if "--qaclip" in r)
    commands = [
        line.split(" #")[0].strip()
        for _, p, body in blocks(DOC.read_text(encoding="utf-8"))
        if p is None
        for line in body.splitlines()
    ]
    assert gate.split(" #")[0].strip() in commands
