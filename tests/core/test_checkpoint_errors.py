"""Bad checkpoints and names fail with messages that name the culprit; good variants load."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

import qaclip_core
from qaclip_core import CheckpointError, UnknownModelError
from tests.reference_models import reference_model

ARCH = "RN50@RBT3-chinese"


@pytest.fixture(scope="module")
def ref_state():
    return {k: v.clone() for k, v in reference_model(ARCH).state_dict().items()}


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, ref_state):
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    torch.save(
        {"epoch": 1, "step": 2, "name": "x", "state_dict": {"module." + k: v for k, v in ref_state.items()}}, path
    )
    return path


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as e:
        qaclip_core.load_from_name("ViT-B-99")
    msg = str(e.value)
    assert "ViT-B-99" in msg and "ViT-B-16" in msg and "cn-clip-vit-h-14" in msg


def test_unknown_architecture_names_tower():
    with pytest.raises(UnknownModelError, match="ViT-X-1"):
        qaclip_core.create_model("ViT-X-1@RBT3-chinese")
    with pytest.raises(ValueError, match="VISION@TEXT"):
        qaclip_core.create_model("RN50")


def test_variants_load(tmp_path, ref_state, good_ckpt):
    # bare state dict, no module. prefix, with a pooler that the reference drops, fp32 storage
    bare = {k: v.float() for k, v in ref_state.items()}
    bare["bert.pooler.dense.weight"] = torch.zeros(768, 768)
    bare["bert.pooler.dense.bias"] = torch.zeros(768)
    a = qaclip_core.load_checkpoint(_save(tmp_path / "bare.pt", bare), ARCH)
    b = qaclip_core.load_checkpoint(good_ckpt, ARCH)
    c = qaclip_core.load_checkpoint(good_ckpt)  # architecture inferred from the weights
    assert c.arch.name == ARCH
    for m in (a, b, c):
        assert m.dtype == torch.float32 and not m.training
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": ref_state}, legacy, _use_new_zipfile_serialization=False)
    assert qaclip_core.load_checkpoint(legacy, ARCH).arch.name == ARCH


def test_missing_and_unexpected_keys_are_named(tmp_path, ref_state):
    sd = dict(ref_state)
    del sd["visual.attnpool.q_proj.weight"]
    sd["bert.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        qaclip_core.load_checkpoint(_save(tmp_path / "k.pt", {"state_dict": sd}), ARCH)
    msg = str(e.value)
    assert "visual.attnpool.q_proj.weight" in msg and "bert.extra.weight" in msg and "k.pt" in msg


def test_wrong_architecture_says_what_it_looks_like(good_ckpt):
    with pytest.raises(CheckpointError) as e:
        qaclip_core.load_checkpoint(good_ckpt, "ViT-B-16@RoBERTa-wwm-ext-base-chinese")
    msg = str(e.value)
    assert "ViT-B-16@RoBERTa-wwm-ext-base-chinese" in msg and f"looks like {ARCH}" in msg


def test_shape_mismatch_names_key(tmp_path, ref_state):
    sd = dict(ref_state)
    sd["text_projection"] = torch.zeros(768, 512)
    with pytest.raises(CheckpointError, match=r"text_projection \(checkpoint \(768, 512\), model \(768, 1024\)\)"):
        qaclip_core.load_checkpoint(_save(tmp_path / "s.pt", {"state_dict": sd}), ARCH)


def test_truncated_checkpoint(tmp_path, good_ckpt):
    data = good_ckpt.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt.*truncated or corrupt"):
        qaclip_core.load_checkpoint(cut, ARCH)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("<html>404 not found</html>")
    with pytest.raises(CheckpointError, match=r"junk.pt"):
        qaclip_core.load_checkpoint(junk, ARCH)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt.*empty"):
        qaclip_core.load_checkpoint(empty, ARCH)
    with pytest.raises(CheckpointError, match="does not exist"):
        qaclip_core.load_checkpoint(tmp_path / "absent.pt", ARCH)
    notsd = _save(tmp_path / "list.pt", [1, 2, 3])
    with pytest.raises(CheckpointError, match=r"list.pt.*expected a dict"):
        qaclip_core.load_checkpoint(notsd, ARCH)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match=r"evil.pt.*weights-only"):
        qaclip_core.load_checkpoint(path, ARCH)
    # the same inside torch's zip container
    zpath = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": Evil()}, zpath)
    assert zipfile.is_zipfile(zpath)
    with pytest.raises(CheckpointError, match=r"evil_zip.pt"):
        qaclip_core.load_checkpoint(zpath, ARCH)


def test_fp16_and_bf16_load(good_ckpt):
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        m = qaclip_core.load_checkpoint(good_ckpt, ARCH, precision=precision)
        assert m.dtype == dtype
        with torch.no_grad():
            out = m.encode_text(qaclip_core.tokenize(["一只猫"]))
        assert out.dtype == dtype and torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="fp8"):
        qaclip_core.load_checkpoint(good_ckpt, ARCH, precision="fp8")


def test_random_bytes_never_suggest_an_unsafe_load(tmp_path):
    junk = tmp_path / "random.pt"
    junk.write_bytes(bytes(range(256)) * 20)
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    for path in (junk, tmp_path / "pickled.pt"):
        with pytest.raises(CheckpointError) as e:
            qaclip_core.load_checkpoint(path, ARCH)
        msg = str(e.value)
        assert path.name in msg and "weights_only" not in msg and "False" not in msg, msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_at_load(tmp_path, ref_state, value):
    state = dict(ref_state)
    key = "bert.encoder.layer.1.output.dense.weight"
    state[key] = state[key].clone()
    state[key][3, 7] = value
    path = _save(tmp_path / "diverged.pt", {"state_dict": state})
    with pytest.raises(CheckpointError) as e:
        qaclip_core.load_checkpoint(path, ARCH)
    assert "diverged.pt" in str(e.value) and key in str(e.value) and "NaN or infinite" in str(e.value)


def test_integer_weights_are_named_at_load(tmp_path, ref_state):
    state = dict(ref_state)
    key = "visual.layer2.0.conv1.weight"
    state[key] = (state[key].float() * 100).to(torch.int8)
    path = _save(tmp_path / "quantised.pt", {"state_dict": state})
    with pytest.raises(CheckpointError) as e:
        qaclip_core.load_checkpoint(path, ARCH)
    assert "quantised.pt" in str(e.value) and f"{key} (int8)" in str(e.value)
