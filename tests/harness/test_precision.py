"""Fast paths keep the numbers: half precisions stay close to fp32, fallbacks are exact."""

from __future__ import annotations

import warnings

import pytest
import torch

import qaclip_core
from qaclip_harness.eval.features import encode_image_dataset, encode_texts
from tests.conftest import CAPTIONS, real_images
from tests.reference_models import reference_model

# ViT-B/16 in half precision takes 45 s on 2 CPU cores (slow), beside RN50 here; both run in tox -e tests (CI).
ARCHS = ["RN50@RBT3-chinese", pytest.param("ViT-B-16@RoBERTa-wwm-ext-base-chinese", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=ARCHS)
def fp32_model(request):
    model = qaclip_core.create_model(request.param)
    model.load_state_dict({k: v.float() for k, v in reference_model(request.param).state_dict().items()})
    return model


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float()).min())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_close_to_fp32(fp32_model, dtype):
    images = torch.stack([qaclip_core.image_transform(224)(im) for im in real_images()])
    tokens = qaclip_core.tokenize(CAPTIONS)
    half = qaclip_core.create_model(fp32_model.arch.name)
    half.load_state_dict(fp32_model.state_dict())
    half = half.to(dtype)
    with torch.no_grad():
        assert _cos(fp32_model.encode_image(images), half.encode_image(images)) >= 0.999
        assert _cos(fp32_model.encode_text(tokens), half.encode_text(tokens)) >= 0.999


def test_fast_text_path_equals_plain_path(fp32_model):
    tokens = qaclip_core.tokenize([*CAPTIONS, "短", "一个非常非常长的句子" * 8])
    with torch.no_grad():
        fast = fp32_model.encode_text(tokens)
        fp32_model.text_fast_path = False
        try:
            plain = fp32_model.encode_text(tokens)
        finally:
            fp32_model.text_fast_path = True
    fast, plain = (x / x.norm(dim=-1, keepdim=True) for x in (fast, plain))
    assert (fast - plain).abs().max() <= 1e-5


def test_fast_vision_path_equals_plain_path(fp32_model):
    """Token 0 only in the last ViT block / attention pool changes the work, not the features."""
    images = torch.stack([qaclip_core.image_transform(224)(im) for im in real_images()])
    with torch.no_grad():
        fast = fp32_model.encode_image(images)
        fp32_model.use_fast_paths(False)
        try:
            plain = fp32_model.encode_image(images)
        finally:
            fp32_model.use_fast_paths(True)
    fast, plain = (x / x.norm(dim=-1, keepdim=True) for x in (fast, plain))
    assert (fast - plain).abs().max() <= 1e-5


def test_compiled_vision_tower_equals_eager():
    """--compile: torch.compile of the vision tower, across batch sizes (the last batch is smaller)."""
    import os
    import shutil

    from qaclip_harness.backends import NativeEncoder

    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c):
        pytest.skip("torch.compile on a CPU needs a C++ compiler (g++ or clang++), and none is installed")
    torch.manual_seed(0)
    model = qaclip_core.create_model("ViT-fixture@BERT-fixture")
    images = [(i, qaclip_core.image_transform(model.image_size)(im)) for i, im in enumerate(real_images() * 3)]
    eager_ids, eager = encode_image_dataset(NativeEncoder(model), images, batch_size=4, progress=False)
    compiled = NativeEncoder(model, compile=True)
    assert compiled.compiled
    ids, feats = encode_image_dataset(compiled, images, batch_size=4, progress=False)
    assert ids == eager_ids and len(images) % 4 != 0
    assert (feats - eager).abs().max() <= 1e-5


class _OomEncoder:
    """Raises CUDA-style out-of-memory above a batch size; otherwise a fixed projection."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, limit: int):
        self.limit = limit
        self.sizes = []
        self.w = torch.randn(3 * 4 * 4, 8, generator=torch.Generator().manual_seed(0))

    def encode_image(self, images):
        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return images.flatten(1) @ self.w

    def tokenize(self, texts):
        return qaclip_core.tokenize(texts)

    def encode_text(self, tokens):
        self.sizes.append(len(tokens))
        if len(tokens) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return torch.nn.functional.one_hot(tokens[:, 1] % 8, 8).float() + 0.1


def test_out_of_memory_halves_the_batch_and_says_so():
    data = [(i, torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(i))) for i in range(37)]
    ref_ids, ref = encode_image_dataset(_OomEncoder(limit=100), data, batch_size=16, progress=False)
    enc = _OomEncoder(limit=5)
    with pytest.warns(RuntimeWarning, match="out of memory .* batch size 16; retrying with 8"):
        ids, feats = encode_image_dataset(enc, data, batch_size=16, progress=False)
    assert ids == ref_ids == list(range(37))
    assert torch.allclose(feats, ref, atol=1e-6)
    assert max(s for s in enc.sizes[-3:]) <= 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        texts = encode_texts(_OomEncoder(limit=3), CAPTIONS, batch_size=16, progress=False)
    assert torch.allclose(texts, encode_texts(_OomEncoder(limit=100), CAPTIONS, batch_size=16, progress=False))


def test_other_errors_are_not_swallowed():
    class Broken(_OomEncoder):
        def encode_image(self, images):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        encode_image_dataset(Broken(1), [(0, torch.zeros(3, 4, 4))], batch_size=1, progress=False)
