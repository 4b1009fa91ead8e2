"""``qaclip history`` over three real fixture runs, the third with a deliberate change (seeded noise added to every
image feature of the native encoder, as a broken kernel would): the moved numbers, the cases that changed status and
the queries that changed rank are named; the two unchanged runs move nothing. About a minute and a half on 2 cores
(three suite runs, three evaluations with --dump-predictions): tox -e large."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qaclip_harness.fixture import CHECKPOINT
from qaclip_harness.fixture.shapes import write_shapes_dataset

from .report_page import parse

REPO = Path(__file__).resolve().parents[2]
SELECTION = (
    "fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny or (test_checkpoint_gate and parity-fixture-tiny)"
)
PERTURB = '''"""The deliberate change: seeded noise of 30% of each image feature's norm."""
import torch

from qaclip_harness.backends import native

_original = native.NativeEncoder.encode_image


@torch.inference_mode()
def _noisy(self, images):
    out = _original(self, images)
    g = torch.Generator().manual_seed(int(images.shape[0]))
    noise = torch.randn(out.shape, generator=g).to(out.dtype)
    return out + 0.3 * out.norm(dim=-1, keepdim=True) * noise / out.shape[-1] ** 0.5


native.NativeEncoder.encode_image = _noisy
'''


def _env(tmp: Path, changed: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_") and k != "GITHUB_STEP_SUMMARY"}
    env.update(HF_HUB_OFFLINE="1", QACLIP_CACHE=str(tmp / "cache"))
    if changed:
        env["PYTHONPATH"] = os.pathsep.join([str(tmp / "plugins"), str(REPO)])
    return env


def _fixture_run(tmp: Path, run: Path, data: Path, changed: bool) -> None:
    env = _env(tmp, changed)
    extra = ["-p", "perturb"] if changed else []
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-p",
            "no:cacheprovider",
            "-q",
            "-m",
            "not throughput",
            "-k",
            SELECTION,
            *extra,
            "--report",
            str(run),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert out.returncode == (1 if changed else 0), out.stdout[-3000:]
    # the per-item predictions of one case, kept with the run (qaclip eval --dump-predictions)
    head = "import perturb; " if changed else ""
    code = f"{head}import sys; from qaclip_harness.cli.commands import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "eval",
            "--checkpoint",
            str(CHECKPOINT),
            "--dataset",
            "fixture-shapes",
            "--data-root",
            str(data),
            "--device",
            "cpu",
            "--quiet",
            "--json",
            "--dump-predictions",
            str(run / "predictions" / "fixture-shapes-fixture-tiny"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def _qaclip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qaclip_harness", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.large
def test_history_over_three_fixture_runs_names_the_deliberate_change(tmp_path):
    pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install 'qaclip-core[report]'")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "perturb.py").write_text(PERTURB, encoding="utf-8")
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    write_shapes_dataset(data)
    store = tmp_path / "history"
    for n in (1, 2):  # two runs on main, kept
        _fixture_run(tmp_path, tmp_path / f"run{n}", data, changed=False)
        kept = _qaclip("keep-run", str(tmp_path / f"run{n}"), str(store), "--name", f"main{n}")
        assert kept.returncode == 0, kept.stderr
    current = tmp_path / "current"
    _fixture_run(tmp_path, current, data, changed=True)

    same = _qaclip("history", str(store))
    assert same.returncode == 0, same.stderr
    assert ": 0 numbers moved, 0 cases changed status" in same.stdout.splitlines()[0]
    assert "fixture-shapes-fixture-tiny: 0 of " in same.stdout

    out = _qaclip("history", str(store), str(current), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["name"][-5:] for r in doc["runs"]] == ["main1", "main2", "rrent"]
    assert {(c["case"], c["after"]) for c in doc["status_changes"]} == {
        ("fixture-shapes / fixture-tiny", "failed"),
        ("fixture-shapes-cls / fixture-tiny", "failed"),
        ("parity / fixture-tiny", "failed"),
    }
    moved = {(m["case"], m["number"]): m for m in doc["moved"]}
    assert moved["fixture-shapes-cls / fixture-tiny", "top1"]["share"] > 1  # beyond a whole tolerance
    assert moved["parity / fixture-tiny", "image max|Δ|"]["share"] > 100
    assert ("parity / fixture-tiny", "text max|Δ|") not in moved  # the text tower did not change
    (ranks,) = doc["rank_changes"]
    assert ranks["case"] == "fixture-shapes-fixture-tiny" and ranks["worse"] > 0 and len(ranks["changes"]) > 0

    text = _qaclip("history", str(store), str(current), "--html", str(tmp_path / "page.html"))
    print(text.stdout)  # what the job summary shows, for the record (pytest -s)
    assert "status: parity / fixture-tiny: passed -> failed" in text.stdout
    page = parse((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert len(page.by_id("history").find_all("svg")) == 3  # the two datasets and the parity gate, over three runs
