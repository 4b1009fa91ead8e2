"""The CLI's user errors: one line, exit 2, before any work; results are never lost to a late failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qaclip_harness.cli import commands as cli
from qaclip_harness.fixture import CHECKPOINT
from qaclip_harness.fixture.shapes import write_shapes_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root)
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an evaluation starts: the error must come first."""
    import qaclip_harness.eval.runner as runner

    def refuse(*a, **k):
        raise AssertionError("an evaluation started before the bad option was reported")

    monkeypatch.setattr(runner, "evaluate_card", refuse)


def _run(capsys, *argv) -> tuple:
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--batch-size", "0"], "--batch-size: '0': expected a positive integer"),
        (["--batch-size", "-1"], "--batch-size: '-1': expected a positive integer"),
        (["--text-batch-size", "0"], "--text-batch-size: '0'"),
        (["--device", "cuda:7"], "--device: 'cuda:7'"),
        (["--device", "gpu"], "--device: 'gpu': expected auto, cpu, cuda or cuda:N"),
        (["--arch", "ViT-B-16"], "--arch: 'ViT-B-16': architecture 'ViT-B-16' must be written VISION@TEXT"),
        (["--checkpoint-dir", "{file}"], "--checkpoint-dir: "),
        (["--dump-predictions", "{file}"], "--dump-predictions: "),
        (["--num-workers", "-2"], "--num-workers"),
    ],
    ids=[
        "batch-0",
        "batch-neg",
        "text-batch-0",
        "cuda-7",
        "gpu",
        "arch-no-at",
        "ckpt-dir-file",
        "dump-file",
        "workers",
    ],
)
def test_bad_options_fail_when_parsed(capsys, tmp_path, data_root, no_work, argv, needle):
    file = tmp_path / "a-file"
    file.write_text("x")
    argv = [a.format(file=file) for a in argv]
    code, _, err = _run(
        capsys,
        "eval",
        "--checkpoint",
        str(CHECKPOINT),
        "--dataset",
        "fixture-shapes",
        "--data-root",
        str(data_root),
        *argv,
    )
    assert code == 2
    assert needle in _one_error_line(err)


def test_data_root_that_is_a_file(capsys, tmp_path, no_work):
    file = tmp_path / "f"
    file.write_text("x")
    code, _, err = _run(
        capsys, "eval", "--checkpoint", str(CHECKPOINT), "--dataset", "fixture-shapes", "--data-root", str(file)
    )
    assert code == 2 and "--data-root" in _one_error_line(err) and "is a file" in err


def test_missing_checkpoint_file(capsys, tmp_path, data_root, no_work):
    code, _, err = _run(
        capsys,
        "eval",
        "--checkpoint",
        str(tmp_path / "nope.pt"),
        "--dataset",
        "fixture-shapes",
        "--data-root",
        str(data_root),
    )
    assert code == 2 and "nope.pt" in _one_error_line(err) and "no such file" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "fixture-tiny", "--arch", "RN50@RBT3-chinese"], "--arch applies to --checkpoint only"),
        (["--model", "ViT-B-99"], "unknown model 'ViT-B-99'"),
    ],
    ids=["arch-with-model", "unknown-model"],
)  # zero-shot predictions are written since the ELEVATER cases (test_elevater_data.py)
def test_bad_combinations_fail_before_work(capsys, tmp_path, data_root, no_work, argv, needle):
    argv = [a.format(dir=tmp_path / "out") for a in argv]
    code, _, err = _run(capsys, "eval", *argv, "--dataset", "fixture-shapes-cls", "--data-root", str(data_root))
    assert code == 2 and needle in _one_error_line(err)


def test_unknown_architecture_names_the_cli_option(capsys, tmp_path, data_root):
    odd = tmp_path / "odd.pt"
    torch.save({"state_dict": {"visual.something": torch.zeros(2), "bert.other": torch.zeros(2)}}, odd)
    code, _, err = _run(
        capsys, "eval", "--checkpoint", str(odd), "--dataset", "fixture-shapes", "--data-root", str(data_root)
    )
    line = _one_error_line(err)
    assert code == 2 and "odd.pt" in line and "--arch VISION@TEXT" in line and "arch=" not in line


def test_metrics_survive_a_failed_prediction_write(capsys, tmp_path, data_root, monkeypatch):
    import qaclip_harness.metrics.retrieval as retrieval

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(retrieval, "write_predictions", disk_full)
    code, out, err = _run(
        capsys,
        "eval",
        "--checkpoint",
        str(CHECKPOINT),
        "--dataset",
        "fixture-shapes",
        "--data-root",
        str(data_root),
        "--dump-predictions",
        str(tmp_path / "preds"),
        "--json",
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 1
    assert '"t2i_r1"' in out  # the metrics were printed before the write failed
    assert "the metrics above were computed" in err and "No space left" in err
