"""The ELEVATER report: one grid laid out like Results.md, and the suite end to end (download, evaluate, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qaclip_harness.report.grid import grid_of
from qaclip_harness.report.tables import CaseResult, render_markdown, render_text
from tests.datasets_util import elevater_all_zip, make_elevater

REPO = Path(__file__).resolve().parents[2]


def _res(dataset, model, status, measured=None, expected=None, tol=0.1, reason=""):
    checks = []
    if expected is not None:
        delta = measured - expected
        checks = [
            {
                "metric": "top1",
                "measured": measured,
                "expected": expected,
                "tolerance": tol,
                "delta": delta,
                "ok": abs(delta) <= tol,
            }
        ]
    return CaseResult(
        dataset=dataset,
        model=model,
        status=status,
        kind="zeroshot",
        reason=reason,
        checks=checks,
        measured={"top1": measured, "top5": 99.0} if measured is not None else {},
    )


RESULTS = [
    _res("mnist", "cn-clip-vit-b-16", "passed", 67.62, 67.6),
    _res("cifar-10", "cn-clip-vit-b-16", "failed", 90.0, 92.0),
    _res(
        "kitti-distance",
        "cn-clip-vit-b-16",
        "reported",
        16.5,
        33.5,
        reason="KITTI-distance does not reproduce (#77); x",
    ),
    _res("cifar-10", "qa-clip-vit-b-16", "reported", 93.04, reason="measured only: no published value"),
    _res("mnist", "cn-clip-rn50", "skipped", reason="MNIST not found: no folder /d/mnist; run with --download"),
    _res("imagenet", "cn-clip-vit-b-16", "passed", 48.31, 48.3),
]


def test_grid_rows_models_columns_datasets_cells_top1_with_delta():
    text = render_text(RESULTS)
    grid = grid_of(RESULTS, "elevater")
    assert [c for c, _ in grid.columns][:2] == ["cifar-10", "cifar100"] and len(grid.results) == 5
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Zero-shot classification, ELEVATER"))
    header = lines[start + 1].split()
    assert header == ["model", "CIFAR-10", "KITTI-distance", "MNIST"]  # the datasets present, in Results.md order
    rows = {line.split()[0]: line for line in lines[start + 2 : start + 5]}
    assert list(rows) == ["qa-clip-vit-b-16", "cn-clip-rn50", "cn-clip-vit-b-16"]  # registry order
    assert "90.0 (-2.0)!" in rows["cn-clip-vit-b-16"] and "16.5 (-17.0)*" in rows["cn-clip-vit-b-16"]
    assert "67.6 (+0.0)" in rows["cn-clip-vit-b-16"] and "93.0" in rows["qa-clip-vit-b-16"]
    assert "skipped" in rows["cn-clip-rn50"]
    notes = "\n".join(lines[start + 5 :])
    assert "* KITTI-distance does not reproduce (#77) (not gated)" in notes
    assert "no published value (measured only): qa-clip-vit-b-16" in notes
    assert "skipped (1): MNIST not found: no folder /d/mnist" in notes
    # ImageNet keeps its own table; the ELEVATER datasets have none of their own
    assert "imagenet  (cells:" in text and "mnist  (cells:" not in text and "cifar-10  (cells:" not in text


def test_grid_in_markdown():
    md = render_markdown(RESULTS)
    assert "## Zero-shot classification, ELEVATER (Chinese), top-1" in md
    assert "| model | CIFAR-10 | KITTI-distance | MNIST |" in md
    assert "| cn-clip-vit-b-16 | 90.0 (-2.0)! | 16.5 (-17.0)* | 67.6 (+0.0) |" in md
    assert "| qa-clip-vit-b-16 | 93.0 |  |  |" in md
    assert "## imagenet" in md and "## mnist" not in md


def test_measured_only_rows_in_a_per_dataset_table():
    """Outside a grid, a measured-only row shows its value without a delta."""
    rows = [
        _res("imagenet", "qa-clip-rn50", "reported", 35.51, reason="measured only: none"),
        _res("imagenet", "cn-clip-rn50", "passed", 33.52, 33.5),
    ]
    line = next(x for x in render_text(rows).splitlines() if x.startswith("qa-clip-rn50"))
    assert line.split()[1] == "35.5" and line.endswith("reported, not gated: measured only: none")
    # alone in its table, its measured metrics make the columns
    assert "| qa-clip-rn50 | 35.5 | 99.0 | reported, not gated: measured only: none |" in render_markdown([rows[0]])


def test_suite_downloads_evaluates_and_reports_the_grid(tmp_path):
    """pytest benchmarks with --download: ELEVATER_all.zip from a local hub, two datasets unpacked, one grid."""
    src = tmp_path / "src"
    kitti = make_elevater(src, "kitti-distance", ["圆形", "十字形", "菱形", "正方形"], per_class=2)
    mnist = make_elevater(src, "mnist", [str(i) for i in range(10)], per_class=1)
    dtd = make_elevater(src, "dtd", ["a", "b"], per_class=1)
    elevater_all_zip(
        {"kitti-distance": kitti, "mnist": mnist, "dtd": dtd},
        tmp_path / "hub" / "datasets" / "OFA-Sys" / "chinese-clip-eval" / "ELEVATER_all.zip",
    )
    expected = tmp_path / "expected"
    expected.mkdir()
    tol = "tolerance: {fp32: {top1: {abs: 100, why: 'plumbing only: any value passes'}}}\n"
    (expected / "mnist.yaml").write_text(
        "dataset: mnist\nkind: zeroshot\nsplit: test\nsources: {made-up: for this test}\n"
        + tol
        + "models: {fixture-tiny: {gate: made-up, made-up: {top1: 50.0}}}\n",
        encoding="utf-8",
    )
    (expected / "kitti-distance.yaml").write_text(
        "dataset: kitti-distance\nkind: zeroshot\nsplit: test\nsources: {made-up: for this test}\n"
        + tol
        + "models: {fixture-tiny: {measured_only: nothing published for the fixture}}\n",
        encoding="utf-8",
    )
    from qaclip_harness.fetch.local_hub import serve_directory

    with serve_directory(tmp_path / "hub") as hub:
        env = dict(os.environ, QACLIP_EXPECTED_DIR=str(expected), QACLIP_HF_ENDPOINT=hub.endpoint)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "benchmarks",
                "-k",
                "test_zeroshot",
                "-q",
                "-p",
                "no:cacheprovider",
                "--data-root",
                str(tmp_path / "data"),
                "--download",
                "--report",
                str(tmp_path / "report"),
                "--device",
                "cpu",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    datasets = tmp_path / "data" / "datasets"
    assert (datasets / "mnist" / "test").is_dir() and (datasets / "kitti-distance" / "test").is_dir()
    assert not (datasets / "dtd").exists()  # in the archive, but no case needs it
    results = {r["dataset"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["results"]}
    assert results["mnist"]["status"] == "passed" and results["mnist"]["counts"]["images"] == 10
    assert results["kitti-distance"]["status"] == "reported" and not results["kitti-distance"]["checks"]
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| model | KITTI-distance | MNIST |" in md
    row = next(line for line in md.splitlines() if line.startswith("| fixture-tiny |"))
    kitti_cell, mnist_cell = [c.strip() for c in row.strip("|").split("|")[1:3]]
    assert kitti_cell == f"{results['kitti-distance']['measured']['top1']:.1f}"
    assert mnist_cell.startswith(f"{results['mnist']['measured']['top1']:.1f} (")
    assert "Zero-shot classification, ELEVATER" in run.stdout
