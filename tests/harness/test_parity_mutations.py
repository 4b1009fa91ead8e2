"""Parity can fail: three plausible faults in our model fail it against a fully random reference.

cn_clip's own initialisation zeroes every bottleneck's ``bn3`` weight and leaves biases at 0
and LayerNorms at 1/0, so against a reference initialised that way each of these faults gives
*identical* features (shown by the last test). :func:`reference_models.reference_model`
randomises every float tensor, and then each fault moves features far beyond the parity
tolerance. The comparison is the parity gate's own (``qaclip_harness.gates``), on the probe set.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

import qaclip_core
from qaclip_core.model.vision import Bottleneck
from qaclip_harness.backends import NativeEncoder
from qaclip_harness.backends.reference import CnClipReference
from qaclip_harness.gates.drift import tower_drift
from qaclip_harness.gates.features import EncoderSource
from qaclip_harness.gates.parity import default_tolerance
from qaclip_harness.probe import load_probe_set
from tests.conftest import require_reference
from tests.reference_models import reference_model, save_reference_checkpoint

ARCH = "RN50@RBT3-chinese"
TOL = default_tolerance().max_abs


def _no_relu_after_bn2(model):
    for block in model.visual.modules():
        if isinstance(block, Bottleneck):
            block.activations[1] = nn.Identity()


def _bert_layernorm_without_bias(model):
    for _name, module in model.bert.named_modules():
        if isinstance(module, nn.LayerNorm):
            module.bias = None  # F.layer_norm without a bias, as code that forgot it would compute


def _intermediate_without_bias(model):
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense.bias = None


MUTATIONS = {
    "no-relu-after-bn2": ("image", _no_relu_after_bn2),
    "bert-layernorm-without-bias": ("text", _bert_layernorm_without_bias),
    "bert-intermediate-without-bias": ("text", _intermediate_without_bias),
}


def _features(source, tower: str):
    probe = load_probe_set()
    with torch.no_grad():
        if tower == "image":
            return source.image_features(list(probe.images)), list(probe.image_names)
        return source.text_features(list(probe.captions)), list(probe.captions)


def _drift(ckpt, reference, tower: str, mutate=None) -> float:
    model = qaclip_core.load_checkpoint(ckpt, ARCH)
    if mutate is not None:
        mutate(model)
    ours, names = _features(EncoderSource(NativeEncoder(model)), tower)
    return tower_drift(tower, ours, reference[tower], names).max_abs


def _reference_features(ckpt):
    source = CnClipReference(ARCH, ckpt)
    return {tower: _features(source, tower)[0] for tower in ("image", "text")}


@pytest.fixture(scope="module")
def random_world(tmp_path_factory):
    """A checkpoint with every float tensor random, and the reference's probe features of it."""
    ckpt = save_reference_checkpoint(reference_model(ARCH, seed=3), tmp_path_factory.mktemp("mut") / "random.pt")
    return ckpt, _reference_features(ckpt)


@pytest.mark.parity
def test_unmutated_model_passes(random_world):
    ckpt, ref = random_world
    for tower in ("image", "text"):
        assert _drift(ckpt, ref, tower) <= TOL


@pytest.mark.parity
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutated_model_fails_parity(random_world, mutation):
    ckpt, ref = random_world
    tower, mutate = MUTATIONS[mutation]
    drift = _drift(ckpt, ref, tower, mutate)
    assert drift > 100 * TOL, f"{mutation}: max |Δ| {drift:.2e} against the random reference"


@pytest.mark.parity
@pytest.mark.slow
def test_reference_init_hides_the_same_faults(tmp_path):
    """Why the reference is randomised: with cn_clip's own init every fault above passes parity."""
    require_reference()
    from cn_clip.clip.utils import create_model

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        plain = create_model(ARCH).eval()
    ckpt = save_reference_checkpoint(plain, tmp_path / "cn_clip_init.pt")
    ref = _reference_features(ckpt)
    for mutation, (tower, mutate) in sorted(MUTATIONS.items()):
        assert _drift(ckpt, ref, tower, mutate) <= TOL, mutation
