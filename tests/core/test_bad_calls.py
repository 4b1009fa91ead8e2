"""Calls of the public API with values that cannot work: one clear error each, not one from deep inside."""

from __future__ import annotations

import pytest
import torch

from qaclip_core import load_checkpoint, tokenize
from qaclip_core.checkpoint import resolve_device
from qaclip_core.errors import DeviceError, QAClipError


@pytest.mark.parametrize(
    "texts, needle",
    [
        (None, r"tokenize: expected a string or a list of strings, got NoneType None"),
        (5, r"got int 5"),
        (["猫", None], r"tokenize: texts\[1\] is NoneType None, expected a string"),
        (("猫", 3.5), r"texts\[1\] is float 3.5"),
    ],
)
def test_tokenize_names_what_it_expected(texts, needle):
    with pytest.raises(TypeError, match=needle):
        tokenize(texts)


def test_tokenize_still_takes_strings_tuples_and_generators():
    assert torch.equal(tokenize(("猫", "狗")), tokenize(["猫", "狗"]))
    assert torch.equal(tokenize(t for t in ["猫"]), tokenize("猫"))


def test_a_cuda_device_this_machine_lacks_is_named():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    beyond = f"cuda:{count + 6}"
    with pytest.raises(DeviceError, match=rf"device '{beyond}': this machine has (no CUDA device|{count} CUDA)"):
        resolve_device(beyond)
    if count == 0:
        with pytest.raises(DeviceError, match=r"device 'cuda': this machine has no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"device 'tpu:0': expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu:0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_load_checkpoint_on_a_missing_gpu_fails_before_reading(tmp_path):
    from qaclip_harness.fixture import ARCH, CHECKPOINT

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(QAClipError, match=rf"cuda:{count + 6}"):
        load_checkpoint(CHECKPOINT, ARCH, device=f"cuda:{count + 6}")
