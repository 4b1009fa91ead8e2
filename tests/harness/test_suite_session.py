"""The suite's session as a user meets it: offline runs, progress, JUnit properties, reports, option checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from qaclip_harness.data.retrieval import TextRecord, write_retrieval_split

REPO = Path(__file__).resolve().parents[2]


def _suite(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``pytest benchmarks`` with ``args`` in a subprocess, output not a terminal (as in CI)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def test_offline_fixture_run_with_progress_junit_properties_and_report(tmp_path):
    """HF_HUB_OFFLINE=1 (an air-gapped runner): the embedded fixture still evaluates, from the package."""
    report = tmp_path / "report"
    out = _suite(
        "-m",
        "not throughput",
        "-k",
        "fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny",
        "--report",
        str(report),
        "--junitxml",
        str(tmp_path / "junit.xml"),
        env={"HF_HUB_OFFLINE": "1", "QACLIP_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "4 passed" in out.stdout  # the ViT and the ResNet fixture, two cases each
    # progress outside a terminal: one line per stage, with count, time and rate
    assert "encode fixture-shapes images: 180 images in" in out.stdout
    assert "encode fixture-shapes-cls prompts: 1,098 texts in" in out.stdout
    # JUnit: per metric, measured, expected, delta and tolerance
    case = next(
        tc
        for tc in ET.parse(tmp_path / "junit.xml").iter("testcase")
        if "fixture-shapes-fixture-tiny" in tc.get("name")
    )
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["qaclip.status"] == "passed"
    for metric in ("t2i_r1", "i2t_r10", "mean_recall"):
        assert {f"{metric}.{f}" for f in ("measured", "expected", "delta", "tolerance")} <= set(props)
    assert float(props["t2i_r1.tolerance"]) > 0
    assert json.loads((report / "report.json").read_text(encoding="utf-8"))["results"][0]["status"] == "passed"


def _markdown_tables_are_well_formed(markdown: str) -> None:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows
    widths = {line.count("|") for line in rows}
    assert len(widths) == 1, f"rows of different widths in:\n{markdown}"


def test_all_skipped_run_says_so_last_and_require_data_fails(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sel = [
        "-m",
        "not throughput",
        "-k",
        "flickr30k-cn-qa-clip-rn50 or muge-qa-clip-rn50",
        "--data-root",
        str(empty),
        "--checkpoint-dir",
        str(empty),
        "--report",
        str(tmp_path / "r"),
    ]
    out = _suite(*sel, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "all 2 selected reproduction cases were skipped" in last and "nothing was evaluated" in last
    _markdown_tables_are_well_formed((tmp_path / "r" / "report.md").read_text(encoding="utf-8"))
    results = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["results"]
    assert sorted(r["status"] for r in results) == ["skipped", "skipped"]

    out = _suite(*sel, "--require-data", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and "2 failed" in out.stdout, out.stdout[-3000:]
    assert "--require-data is set and" in out.stdout


def _tiny_flickr(root: Path) -> None:
    from qaclip_harness.fixture.shapes import generate_split

    split = generate_split("test")
    images = {img.image_id: img.data for img in split.images[:4]}
    texts = [TextRecord(text_id=i, text=f"图{i}", image_ids=[image_id]) for i, image_id in enumerate(images)]
    write_retrieval_split(root, "Flickr30k-CN", "test", images, texts)


def test_a_case_that_crashes_is_in_the_report(tmp_path):
    """A corrupt checkpoint errors the case; the only selected case still appears in report.json."""
    data, ckpts = tmp_path / "data", tmp_path / "ckpt"
    _tiny_flickr(data)
    ckpts.mkdir()
    (ckpts / "QA-CLIP-RN50.pt").write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    out = _suite(
        "-m",
        "not throughput",
        "-k",
        "flickr30k-cn-qa-clip-rn50",
        "--data-root",
        str(data),
        "--checkpoint-dir",
        str(ckpts),
        "--report",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 1, out.stdout[-3000:]
    (res,) = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["results"]
    assert res["status"] == "error" and "QA-CLIP-RN50.pt" in res["reason"], res


def test_a_broken_import_inside_the_package_is_an_error_not_a_skip(tmp_path):
    """Only a missing optional dependency may skip a case; any other ImportError must surface."""
    (tmp_path / "break_import.py").write_text(
        "import qaclip_harness.backends.native as native\n"
        "def _broken(*a, **k):\n"
        "    raise ImportError(\"cannot import name 'gone' from 'qaclip_core.model'\")\n"
        "native.load = _broken\n",
        encoding="utf-8",
    )
    out = _suite(
        "-m",
        "not throughput",
        "--select-models",
        "fixture-tiny",
        "--select-datasets",
        "fixture-shapes-cls",
        "-p",
        "break_import",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 1, out.stdout[-3000:]
    assert "1 failed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1]


def test_large_cpu_throughput_cases_are_opt_in():
    out = _suite("--collect-only", "-q", "-m", "throughput", "--device", "cpu")
    assert out.returncode == 0, out.stdout[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("qaclip: left out"))
    assert "--cpu-large-throughput" in line and "--cpu-peer-throughput" in line
    listed = out.stdout.split("qaclip: left out")[0]
    assert "vit-l-14" not in listed and "altclip" not in listed
    # the other backends' twins: only the fixture's by default (their code paths still run)
    assert "fixture-fp32-b1-onnxruntime" in listed and "vit-b-16-fp32-b1-onnxruntime" not in listed
    assert "vit-b-16-fp32-b1-transformers" not in listed and "vit-b-16-fp32-b1-qaclip_core" in listed
    everything = _suite(
        "--collect-only", "-q", "-m", "throughput", "--device", "cpu", "--cpu-large-throughput", "--cpu-peer-throughput"
    )
    assert "vit-b-16-fp32-b16-transformers" in everything.stdout and "qaclip: left out" not in everything.stdout
    # reproduction cases are all collected either way
    repro = _suite("--collect-only", "-q", "-m", "reproduction", "--device", "cpu")
    n = sum(len(yaml.safe_load(p.read_text(encoding="utf-8"))["models"]) for p in (REPO / "expected").glob("*.yaml"))
    assert f"{n} selected" in repro.stdout or f"{n}/" in repro.stdout, repro.stdout[-500:]


@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["--batch-size", "0"], {}, "--batch-size '0': expected a positive integer"),
        (["--device", "cuda:7"], {}, "--device 'cuda:7'"),
        (["--checkpoint-dir", "{file}"], {}, "--checkpoint-dir"),
        ([], {"QACLIP_EXPECTED_DIR": "{missing}"}, "QACLIP_EXPECTED_DIR"),
        ([], {"QACLIP_EXPECTED_DIR": "{broken}"}, "broken.yaml: is not valid YAML at line 1"),
        ([], {"QACLIP_HISTORY": "{file}"}, "QACLIP_HISTORY '"),  # the variable the user set, not the flag
    ],
    ids=["batch-0", "cuda-7", "checkpoint-dir-file", "expected-dir-missing", "expected-malformed", "history-file"],
)
def test_bad_options_stop_at_start_with_one_line(tmp_path, args, env, needle):
    """Checked at configure time: exit 4 (usage error), one ERROR line naming option and value, no traceback."""
    file = tmp_path / "a-file"
    file.write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken.yaml").write_text("dataset: [unclosed", encoding="utf-8")
    fill = {"file": str(file), "missing": str(tmp_path / "nowhere"), "broken": str(broken)}
    args = [a.format(**fill) for a in args]
    env = {k: v.format(**fill) for k, v in env.items()}
    out = _suite("--collect-only", "-q", *args, env=env)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_a_check_case_that_crashes_is_in_the_report_too(tmp_path):
    """Suite cases outside expected/ (marked suite_case) are recorded by the plugin when they crash."""
    (tmp_path / "break_compare.py").write_text(
        "import qaclip_harness.export.parity as parity\n"
        "def _broken(*a, **k):\n"
        "    raise RuntimeError('comparison exploded')\n"
        "parity.compare = _broken\n",
        encoding="utf-8",
    )
    out = _suite(
        "-m",
        "not throughput",
        "--select-models",
        "fixture-tiny",
        "-k",
        "onnx-parity",
        "-p",
        "break_compare",
        "--report",
        str(tmp_path / "r"),
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 1, out.stdout[-3000:]
    (res,) = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["results"]
    assert (res["dataset"], res["model"], res["status"]) == ("onnx-parity", "fixture-tiny", "error")
    assert "comparison exploded" in res["reason"]
