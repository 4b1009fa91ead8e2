"""tools/throughput_report.py: speed-ups and FLOP-bound shares computed from a saved run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("throughput_report", ROOT / "tools" / "throughput_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(name, group, mean, **info):
    return {"name": name, "group": group, "stats": {"mean": mean}, "extra_info": info}


def _run(tmp_path, records):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": records}), encoding="utf-8")
    return path


def test_speedups_pair_ours_with_the_reference(report, tmp_path):
    path = _run(
        tmp_path,
        [
            _record("a", "encode_text X fp32 b64 cpu", 1.0, impl="qaclip_core", items_per_s=300.0),
            _record("b", "encode_text X fp32 b64 cpu", 3.0, impl="cn_clip", items_per_s=100.0),
            _record("c", "loader", 1.0, impl="qaclip_core", workers=2, items_per_s=900.0),
            _record("d", "loader", 1.0, impl="cn_clip", workers=0, items_per_s=450.0),
            _record("e", "scoring", 2.0, impl="qaclip_core", reference_seconds_scaled=100.0),
            _record("f", "encode_text X fp32 b64 cpu", 1.5, impl="onnxruntime", items_per_s=450.0),
            _record("g", "encode_text X fp32 b64 cpu", 0.5, impl="qaclip_core+compile", items_per_s=600.0),
        ],
    )
    rows = {(g, o): r for g, o, _, _, r in report.ratios(path)}
    # ONNX Runtime against our eager PyTorch model, never as a reference ours is divided by
    assert rows[("encode_text X fp32 b64 cpu", "onnxruntime / qaclip_core")] == pytest.approx(1.5)
    assert not any("/ onnxruntime" in o or "onnxruntime / qaclip_core+" in o for _, o in rows)
    assert rows[("encode_text X fp32 b64 cpu", "qaclip_core / cn_clip")] == pytest.approx(3.0)
    assert rows[("loader", "qaclip_core w2 / cn_clip w0")] == pytest.approx(2.0)
    assert rows[("scoring", "qaclip_core / cn_clip (sampled, scaled)")] == pytest.approx(50.0)


def test_flop_shares_against_bound_and_measured_matmul(report, tmp_path):
    bounds = yaml.safe_load((ROOT / "benchmarks" / "flop_bounds.yaml").read_text(encoding="utf-8"))
    h100 = "NVIDIA H100 80GB HBM3"
    path = _run(
        tmp_path,
        [
            _record(
                "vitb",
                "g1",
                1.0,
                impl="qaclip_core",
                arch="ViT-B-16@RoBERTa-wwm-ext-base-chinese",
                batch=256,
                precision="bf16",
                device="cuda",
                device_name=h100,
                items_per_s=10000.0,
                nominal_gflops_per_item=35.0,
            ),
            _record(
                "vitl",
                "g2",
                1.0,
                impl="qaclip_core",
                arch="ViT-L-14@RoBERTa-wwm-ext-large-chinese",
                batch=256,
                precision="fp16",
                device="cuda",
                device_name=h100,
                items_per_s=1000.0,
                nominal_gflops_per_item=162.0,
            ),
            _record(
                "small",
                "g3",
                1.0,
                impl="qaclip_core",
                arch="ViT-B-16@RoBERTa-wwm-ext-base-chinese",
                batch=64,
                precision="bf16",
                device="cuda",
                device_name=h100,
                items_per_s=10000.0,
                nominal_gflops_per_item=35.0,
            ),
            _record(
                "cpu",
                "g4",
                1.0,
                impl="qaclip_core",
                arch="RN50@RBT3-chinese",
                batch=16,
                precision="fp32",
                device="cpu",
                device_name="x86_64",
                items_per_s=10.0,
                nominal_gflops_per_item=12.0,
            ),
            _record("mm", "g5", 1.0, impl="torch matmul", precision="bf16", device="cuda", achieved_tflops=700.0),
        ],
    )
    rows = {r[0]: r for r in report.flop_shares(path, bounds)}
    assert rows["vitb"][2] == pytest.approx(350.0)  # TFLOP/s
    assert rows["vitb"][3] == pytest.approx(0.5)  # of the measured matmul rate
    assert rows["vitb"][4] == pytest.approx(350 / 800) and rows["vitb"][5] == "meets target"
    assert rows["vitl"][4] == pytest.approx(162 / 800) and rows["vitl"][5].startswith("below")
    assert rows["vitl"][3] is None  # no fp16 matmul record in this run
    assert rows["small"][5] == ""  # not a target case (batch 64)
    assert rows["cpu"][4] is None and rows["cpu"][5] == ""  # no bound for this device


def test_nominal_flops_are_the_design_figures():
    """DESIGN.md section 5: ViT-B/16 about 35 GFLOPs per image and ViT-L/14 about 162, every token computed."""
    from qaclip_harness.pytest_plugin.throughput_support import nominal_image_gflops

    assert nominal_image_gflops("ViT-B-16@RoBERTa-wwm-ext-base-chinese") == pytest.approx(35.1, abs=0.1)
    assert nominal_image_gflops("ViT-L-14@RoBERTa-wwm-ext-large-chinese") == pytest.approx(162.0, abs=0.1)
