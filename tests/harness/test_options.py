"""Option and expected-file validation: each bad value is one message naming the option (or file and key)."""

from __future__ import annotations

import pytest
import torch

from qaclip_harness import options
from qaclip_harness.expected import ExpectedFileError, load_expected


@pytest.mark.parametrize("value", ["0", "-1", "zero", "1.5", ""])
def test_positive_int_rejects(value):
    with pytest.raises(options.OptionError, match=rf"--batch-size {value!r}: expected a positive integer"):
        options.positive_int(value, "--batch-size")


def test_positive_int_accepts():
    assert options.positive_int(" 64 ", "--batch-size") == 64


@pytest.mark.parametrize(
    "value,needle",
    [
        ("tpu", "expected auto, cpu, cuda or cuda:N"),
        ("cuda:x", "cuda:N with N a GPU index"),
        ("cuda:99", "cuda:99"),
    ],
)
def test_device_rejects(value, needle):
    with pytest.raises(options.OptionError, match=needle):
        options.device(value)


def test_device_accepts_what_exists():
    assert options.device("auto") == "auto" and options.device("CPU") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(options.OptionError, match="no CUDA device"):
            options.device("cuda")


def test_precision():
    assert options.precision("bf16") == "bf16"
    with pytest.raises(options.OptionError, match="--precision 'fp8': expected one of fp32, fp16, bf16"):
        options.precision("fp8")


def test_folders(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(options.OptionError, match=r"--data-root .*expected a folder, but .* is a file"):
        options.folder(f, "--data-root")
    assert options.folder(tmp_path / "later", "--data-root") == tmp_path / "later"  # created when needed
    with pytest.raises(options.OptionError, match="does not exist"):
        options.folder(tmp_path / "later", "--data-root", must_exist=True)
    out = options.new_output_folder(tmp_path / "a" / "b", "--report")
    assert out.is_dir()
    with pytest.raises(options.OptionError, match="--report"):
        options.new_output_folder(f / "sub", "--report")


def test_architecture():
    assert options.architecture("ViT-B-16@RoBERTa-wwm-ext-base-chinese")
    with pytest.raises(options.OptionError, match=r"--arch 'ViT-B-16': .*VISION@TEXT"):
        options.architecture("ViT-B-16")
    with pytest.raises(options.OptionError, match=r"--arch 'ViT-Q-1@RBT3-chinese': unknown vision tower"):
        options.architecture("ViT-Q-1@RBT3-chinese")


GOOD = """dataset: x
kind: retrieval
split: test
sources: {a: the paper}
tolerance: {fp32: {t2i: {abs: 0.2, why: rounding}}}
models: {m: {gate: a, a: {t2i_r1: 50.0}}}
"""


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "is empty"),
        ("dataset: [unclosed", "is not valid YAML at line 1"),
        ("- a list", "expected a mapping"),
        (GOOD.replace("abs: 0.2", "abs: lots"), "tolerance.fp32.t2i.abs must be a number, got 'lots'"),
        (GOOD.replace("abs: 0.2", "abs: -1"), "tolerance.fp32.t2i.abs must not be negative"),
        (GOOD.replace(", why: rounding", ""), "tolerance.fp32.t2i needs 'abs'"),
        (GOOD.replace("t2i_r1: 50.0", "t2i_r1: high"), "models.m.a.t2i_r1 must be a number"),
        (GOOD.replace("gate: a", "gate: b"), "models.m.gate 'b' is not one of its sources"),
        (GOOD.replace("t2i_r1", "i2t_r1"), "no tolerance.fp32 entry for metric 'i2t_r1'"),
        (GOOD.replace("kind: retrieval", "kind: ranking"), "kind must be one of"),
        (GOOD.replace("split: test\n", ""), "missing top-level key(s) 'split'"),
        (
            GOOD.replace(
                "models: {m: {gate: a, a: {t2i_r1: 50.0}}}", "models: {m: {gate: a, a: {t2i_r1: 50.0}, c: {t2i_r1: 1}}}"
            ),
            "cites undeclared sources ['c']",
        ),
    ],
    ids=[
        "empty",
        "malformed",
        "list",
        "abs-text",
        "abs-negative",
        "no-why",
        "value-text",
        "gate",
        "no-tolerance",
        "kind",
        "no-split",
        "undeclared-source",
    ],
)
def test_expected_file_errors_name_file_and_key(tmp_path, text, needle):
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ExpectedFileError) as e:
        load_expected(tmp_path)
    assert "bad.yaml" in str(e.value) and needle in str(e.value)


def test_expected_folder_and_duplicates(tmp_path):
    with pytest.raises(ExpectedFileError, match="does not exist"):
        load_expected(tmp_path / "nowhere")
    (tmp_path / "a.yaml").write_text(GOOD, encoding="utf-8")
    assert [c.id for c in load_expected(tmp_path)] == ["x-m"]
    (tmp_path / "b.yaml").write_text(GOOD, encoding="utf-8")
    with pytest.raises(ExpectedFileError, match="case x-m is also defined in"):
        load_expected(tmp_path)
