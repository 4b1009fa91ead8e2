"""The suite end to end on the ONNX backend: the fixture exported, run by ONNX Runtime, held to its expected numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qaclip_core.registry import get_card

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")

REPO = Path(__file__).resolve().parents[2]


def test_fixture_cases_pass_through_onnx_runtime(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-m",
            "not throughput",
            "-k",
            "(fixture-shapes and not hf) or onnx-parity-fixture or readme-example",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--backend",
            "onnx",
            "--device",
            "cpu",
            "--report",
            str(tmp_path / "report"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, QACLIP_CACHE=str(tmp_path / "cache")),
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "6 passed, 1 skipped" in out.stdout, out.stdout[
        -3000:
    ]  # shapes, shapes-cls and onnx-parity of both fixtures
    # published for ONNX fp16: skipped in fp32 with one line saying how to run it
    assert "published for onnx fp16; run with --precision fp16" in out.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["backend"] == "onnx"
    results = {r["dataset"]: r for r in report["results"] if r["model"] in ("fixture-tiny", "cn-clip-vit-b-16")}
    assert {k: r["status"] for k, r in results.items()} == {
        "fixture-shapes": "passed",
        "fixture-shapes-cls": "passed",
        "onnx-parity": "passed",
        "readme-example": "skipped",
    }
    assert results["fixture-shapes"]["backend"] == "onnx" and results["fixture-shapes-cls"]["backend"] == "onnx"
    # within the fixture's off-CPU near-tie allowance (ONNX Runtime is another implementation), for both models
    for r in report["results"]:
        for check in r["checks"] if r["dataset"].startswith("fixture-shapes") else []:
            assert abs(check["delta"]) <= check["tolerance"] + 1e-9, (r["dataset"], r["model"], check)
    # each fixture's export went into the cache, under its checkpoint's key
    exports = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir() if p.is_dir())
    shas = sorted(get_card(m).sha256[:24] for m in ("fixture-tiny", "fixture-tiny-rn"))
    assert [e.split("-")[0] for e in exports] == shas
    assert all(re.fullmatch(r"[0-9a-f]{24}-opset20-fp32-[0-9a-f]{16}", e) for e in exports), exports
    # each with its record: the key's fields and the canary ONNX Runtime computed on this device
    for e in exports:
        record = json.loads((tmp_path / "cache" / "onnx" / f"{e}.json").read_text(encoding="utf-8"))
        assert record["fields"]["checkpoint"][:24] == e[:24] and list(record["canaries"]) == [
            "cpu CPUExecutionProvider"
        ]
