"""Link 1 of the correctness chain: same state-dict layout and same features as cn_clip."""

from __future__ import annotations

import gc

import pytest
import torch

import qaclip_core
from tests.conftest import CAPTIONS, real_images, require_reference
from tests.reference_models import reference_with_checkpoint

require_reference(allow_module_level=True)
from cn_clip.clip import image_transform as ref_transform  # noqa: E402 -- after require_reference, which names the oracle when it is missing
from cn_clip.clip import tokenize as ref_tokenize  # noqa: E402 -- after require_reference, which names the oracle when it is missing

# (architecture, images, captions): the large architectures on a few inputs here (building the
# two models is most of their cost); on the whole probe set, through the suite, they are
# tests/harness/test_checkpoint_gates.py's slow cases.
ARCHS = [
    ("RN50@RBT3-chinese", None, None),
    ("ViT-B-16@RoBERTa-wwm-ext-base-chinese", None, None),
    pytest.param("ViT-L-14@RoBERTa-wwm-ext-base-chinese", 2, 4, marks=pytest.mark.slow),
    pytest.param("ViT-L-14-336@RoBERTa-wwm-ext-base-chinese", 2, 4, marks=pytest.mark.slow),
    pytest.param("ViT-H-14@RoBERTa-wwm-ext-large-chinese", 2, 4, marks=pytest.mark.slow),
]
TOL = 1e-5


def _normed(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def test_registry_architectures_are_all_covered():
    covered = {a.values[0] if hasattr(a, "values") else a[0] for a in ARCHS}
    used = {c.arch for c in qaclip_core.registry.all_cards() if c.family in ("qa-clip", "cn-clip")}
    assert used <= covered


@pytest.mark.parity
@pytest.mark.parametrize("arch, n_images, n_captions", ARCHS)
def test_features_match_reference(arch, n_images, n_captions, tmp_path):
    ref, ckpt = reference_with_checkpoint(arch, tmp_path / "ref.pt")
    res = int(qaclip_core.model.config.arch_config(arch).vision.image_size)
    pictures = real_images()[:n_images]
    captions = CAPTIONS[:n_captions] if n_captions is None else CAPTIONS[-n_captions:]  # the hardest ones are last
    images = torch.stack([ref_transform(res)(im) for im in pictures])
    texts = ref_tokenize(captions)
    with torch.no_grad():
        ref_img = _normed(ref.encode_image(images))
        ref_txt = _normed(ref.encode_text(texts))
    del ref
    gc.collect()

    model = qaclip_core.load_checkpoint(ckpt, arch)  # strict: raises on any key or shape mismatch
    ours_images = torch.stack([qaclip_core.image_transform(res)(im) for im in pictures])
    assert torch.equal(ours_images, images)
    with torch.no_grad():
        img = _normed(model.encode_image(ours_images))
        txt = _normed(model.encode_text(qaclip_core.tokenize(captions)))
    assert (img - ref_img).abs().max().item() <= TOL
    assert (txt - ref_txt).abs().max().item() <= TOL
    # the inferred architecture of the checkpoint is the one it was built as
    assert qaclip_core.infer_arch(qaclip_core.read_state_dict(ckpt)) == arch


@pytest.mark.parity
def test_untrimmed_text_path_matches_trimmed(tmp_path):
    _ref, ckpt = reference_with_checkpoint("RN50@RBT3-chinese", tmp_path / "ref.pt")
    model = qaclip_core.load_checkpoint(ckpt, "RN50@RBT3-chinese")
    ids = qaclip_core.tokenize(CAPTIONS)
    with torch.no_grad():
        trimmed = _normed(model.encode_text(ids))
        model.text_fast_path = False
        full = _normed(model.encode_text(ids))
    assert (trimmed - full).abs().max().item() <= TOL


@pytest.mark.parity
def test_get_similarity_matches_reference(tmp_path):
    ref, ckpt = reference_with_checkpoint("RN50@RBT3-chinese", tmp_path / "ref.pt")
    model = qaclip_core.load_checkpoint(ckpt, "RN50@RBT3-chinese")
    images = torch.stack([ref_transform(224)(im) for im in real_images()[:3]])
    texts = ref_tokenize(CAPTIONS[:4])
    with torch.no_grad():
        a_img, a_txt = ref.get_similarity(images, texts)
        b_img, b_txt = model.get_similarity(images, texts)
    assert b_img.shape == (3, 4) and b_txt.shape == (4, 3)
    assert torch.allclose(a_img, b_img, atol=1e-3) and torch.allclose(a_txt, b_txt, atol=1e-3)


@pytest.mark.parametrize("arch", ["ViT-fixture@BERT-fixture", "RN50@RBT3-chinese"])
def test_reference_kwargs_build_the_same_layout(arch):
    """reference_kwargs: cn_clip's CLIP built from our config has our state-dict keys and shapes."""
    from cn_clip.clip.model import CLIP as RefCLIP

    from qaclip_core.model.config import reference_kwargs

    ref = {k: v.shape for k, v in RefCLIP(**reference_kwargs(arch)).state_dict().items() if "bert.pooler" not in k}
    ours = {k: v.shape for k, v in qaclip_core.model.clip.create_model(arch).state_dict().items()}
    assert ref == ours
