"""Scale-out: torchrun sharding gives single-process numbers bit for bit; xdist merges one report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qaclip_harness.fixture import CHECKPOINT
from qaclip_harness.fixture.shapes import write_shapes_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root)
    return root


def _run(cmd, **env):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)  # same kernels in every process
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=full_env, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("dataset", ["fixture-shapes", "fixture-shapes-cls"])
def test_torchrun_gloo_equals_single_process(shapes_root, tmp_path, dataset):
    # 180 retrieval (120 zero-shot) images in batches of 7 and 386 texts in batches of
    # 100: neither is a multiple of 2 x batch size, so the last shard is uneven
    args = [
        "eval",
        "--checkpoint",
        str(CHECKPOINT),
        "--dataset",
        dataset,
        "--data-root",
        str(shapes_root),
        "--device",
        "cpu",
        "--batch-size",
        "7",
        "--text-batch-size",
        "100",
        "--json",
        "--quiet",
    ]
    dump = dataset == "fixture-shapes"
    single = _run(
        [sys.executable, "-m", "qaclip_harness", *args]
        + (["--dump-predictions", str(tmp_path / "single")] if dump else [])
    )
    multi = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "qaclip_harness",
            *args,
        ]
        + (["--dump-predictions", str(tmp_path / "multi")] if dump else [])
    )
    one = json.loads(single.strip().splitlines()[-1])
    two = json.loads([line for line in multi.strip().splitlines() if line.startswith("{")][-1])
    assert two.pop("processes") == 2 and one.pop("processes") == 1
    assert one == two  # every metric and count, exactly
    if dump:
        for name in ("test_predictions.jsonl", "test_tr_predictions.jsonl"):
            assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "multi" / name).read_bytes()


def test_xdist_two_workers_merge_one_report(tmp_path):
    pytest.importorskip("xdist")
    report = tmp_path / "report"
    out = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-n",
            "2",
            "-m",
            "not throughput",
            "-q",
            "-p",
            "no:cacheprovider",
            "--report",
            str(report),
            "-k",
            "(fixture-shapes and not hf) or flickr",
        ]
    )
    assert "QA-CLIP reproduction report" in out
    results = json.loads((report / "report.json").read_text(encoding="utf-8"))["results"]
    ids = [f"{r['dataset']}-{r['model']}" for r in results]
    assert len(ids) == len(set(ids))  # every case once
    assert {"fixture-shapes-fixture-tiny", "fixture-shapes-cls-fixture-tiny"} <= set(ids)
    from qaclip_harness.expected import load_expected

    flickr = [c for c in load_expected(Path(__file__).resolve().parents[2] / "expected") if c.dataset == "flickr30k-cn"]
    assert sum(i.startswith("flickr30k-cn-") for i in ids) == len(flickr)
    status = {f"{r['dataset']}-{r['model']}": r["status"] for r in results}
    assert status["fixture-shapes-fixture-tiny"] == "passed" and status["flickr30k-cn-qa-clip-rn50"] == "skipped"
    md = (report / "report.md").read_text(encoding="utf-8")
    # one fixture-tiny row per fixture dataset (the parity-hf table names the .pt it compares with, too)
    fixture_tables = [t for t in md.split("\n## ") if t.startswith("fixture-shapes")]
    results_part = [
        t.split("Provenance (")[0] for t in fixture_tables
    ]  # the provenance table names each model once more
    assert len(fixture_tables) == 2 and all(t.count("| fixture-tiny |") == 1 for t in results_part)
