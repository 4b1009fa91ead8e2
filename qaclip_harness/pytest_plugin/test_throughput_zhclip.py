"""Throughput of the ZH-CLIP backend (transformers' CLIP vision and BERT towers) on randomly initialised models.

Random weights of the real architecture (CLIP ViT-L/14 image tower, Chinese RoBERTa-wwm-ext-large text tower
with mean pooling and its two-layer head, as ``thu-ml/zh-clip-vit-roberta-large-patch14`` describes it) cost
what the real ones cost, so the full-size cases run wherever transformers is installed (off CUDA only with
``--cpu-large-throughput`` and ``--cpu-peer-throughput``); a fixture-size twin of the same code runs always.
The groups follow ``test_throughput.py``'s scheme with arch ``ZH-CLIP-ViT-L-14`` (or ``ZH-CLIP-fixture``).
Text is the backend's own tokenizer (the Chinese BERT vocabulary, 77 tokens, trimmed) on realistic captions.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch

from .test_throughput import _run
from .throughput_support import batch_sizes, device_precisions, realistic_captions

IMPL = "zhclip"
SKIP_REASON = "ZH-CLIP throughput needs transformers: pip install 'qaclip-core[zhclip]'"

# (arch, vision config, text config, joint width): the published model and a fixture-size twin
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "ZH-CLIP-ViT-L-14": (
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
            "hidden_act": "gelu",
        },
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
        },
        768,
    ),
    "ZH-CLIP-fixture": (
        {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "patch_size": 8,
            "image_size": 64,
            "hidden_act": "gelu",
        },
        {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 96,
            "type_vocab_size": 2,
        },
        48,
    ),
}


def _params(tower: str) -> list:
    params = []
    for arch in SIZES:
        full = arch != "ZH-CLIP-fixture"
        marks = [pytest.mark.large_model, pytest.mark.peer_backend] if full else []
        short = "zh-clip-vit-l-14" if full else "zh-clip-fixture"
        params += [
            pytest.param(arch, device, precision, batch, id=f"{short}-{precision}-b{batch}-{IMPL}", marks=marks)
            for device, precision in device_precisions()
            for batch in batch_sizes(device, tower)
        ]
    return params


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip with the install hint."""
    return pytest.importorskip("transformers", reason=SKIP_REASON, exc_type=ImportError)


@lru_cache(maxsize=1)
def _encoder(arch: str, device: str, precision: str):
    """The backend's encoder over a random ZH-CLIP of ``arch`` on ``device`` in ``precision`` (one cached at a time)."""
    import transformers as tf

    from qaclip_core.checkpoint import resolve_dtype
    from qaclip_core.tokenizer import VOCAB_PATH
    from qaclip_harness.backends.altclip import pil_image_processor_class
    from qaclip_harness.backends.zhclip import ZhCLIP, ZhCLIPEncoder

    vision, text, joint = SIZES[arch]
    vocab = len(Path(VOCAB_PATH).read_text(encoding="utf-8").splitlines())
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs: much faster on a GPU
        model = ZhCLIP(tf.CLIPVisionConfig(**vision), tf.BertConfig(vocab_size=vocab, **text), joint)
    model = model.to(dtype=resolve_dtype(precision)).eval()
    folder = tempfile.mkdtemp(prefix="qaclip-zhclip-tokenizer-")
    shutil.copyfile(VOCAB_PATH, Path(folder) / "vocab.txt")
    tokenizer = tf.BertTokenizer.from_pretrained(folder)
    res = vision["image_size"]
    processor = pil_image_processor_class(tf)(size={"shortest_edge": res}, crop_size={"height": res, "width": res})
    return ZhCLIPEncoder(model, processor, tokenizer, name=arch)


def _info(tower: str, arch: str, batch: int, precision: str, tf) -> dict:
    return {
        "tower": tower,
        "arch": arch,
        "batch": batch,
        "precision": precision,
        "impl": IMPL,
        "transformers": tf.__version__,
    }


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch", _params("image"))
def test_encode_image_zhclip(benchmark, tf, arch, device, precision, batch):
    """Images per second of the ZH-CLIP backend's encode_image (pooled class token, biased projection)."""
    encoder = _encoder(arch, device, precision)
    res = SIZES[arch][0]["image_size"]
    images = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device, encoder.dtype)
    benchmark.group = f"encode_image {arch} {precision} b{batch} {device}"
    _run(benchmark, lambda: encoder.encode_image(images), device, batch, _info("image", arch, batch, precision, tf))


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch", _params("text"))
def test_encode_text_zhclip(benchmark, tf, arch, device, precision, batch):
    """Captions per second of the ZH-CLIP backend's encode_text (masked mean, Linear-GELU-Linear) on realistic captions."""
    encoder = _encoder(arch, device, precision)
    tokens = encoder.tokenize(realistic_captions(batch)).to(device)
    benchmark.group = f"encode_text {arch} {precision} b{batch} {device}"
    info = _info("text", arch, batch, precision, tf)
    info.update(mean_tokens=round(float(encoder.attention_mask(tokens).sum(1).float().mean()), 1))
    _run(benchmark, lambda: encoder.encode_text(tokens), device, batch, info)
