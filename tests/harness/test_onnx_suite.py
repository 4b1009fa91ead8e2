"""The suite end to end on the ONNX backend: the fixture exported, run by ONNX Runtime, held to its expected numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")

REPO = Path(__file__).resolve().parents[2]


def test_fixture_cases_pass_through_onnx_runtime(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-m", "not throughput", "-k", "(fixture-shapes and not hf) or onnx-parity-fixture or readme-example", "-q", "-rs",
         "-p", "no:cacheprovider", "--backend", "onnx", "--device", "cpu", "--report", str(tmp_path / "report")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, QACLIP_CACHE=str(tmp_path / "cache")),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "6 passed, 1 skipped" in out.stdout, out.stdout[-3000:]  # shapes, shapes-cls and onnx-parity of both fixtures
    # published for ONNX fp16: skipped in fp32 with one line saying how to run it
    assert "published for onnx fp16; run with --precision fp16" in out.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["backend"] == "onnx"
    results = {r["dataset"]: r for r in report["results"]}
    assert {k: r["status"] for k, r in results.items()} == {
        "fixture-shapes": "passed", "fixture-shapes-cls": "passed", "onnx-parity": "passed", "readme-example": "skipped"}
    assert results["fixture-shapes"]["backend"] == "onnx" and results["fixture-shapes-cls"]["backend"] == "onnx"
    # within one query of the reference's numbers: the fixture's fp32 tolerances are one caption / one image
    for name in ("fixture-shapes", "fixture-shapes-cls"):
        for check in results[name]["checks"]:
            assert abs(check["delta"]) <= check["tolerance"] + 1e-9, (name, check)
    # the export went into the cache, under the checkpoint's key
    exports = [p for p in (tmp_path / "cache" / "onnx").iterdir() if p.is_dir()]
    assert len(exports) == 1 and exports[0].name.endswith("-opset20-fp32-qaclip0.1.0")
