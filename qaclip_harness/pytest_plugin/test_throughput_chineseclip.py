"""Throughput of transformers' ChineseCLIPModel, the implementation most users run, beside ours.

For every architecture of a transformers-format card (ViT towers only: ChineseCLIPModel has no
ResNet), the very weights of ``test_throughput.py``'s models (converted by
``qaclip_harness.convert.hf``) run through ``ChineseCLIPModel.get_image_features`` and
``get_text_features`` with its SDPA attention, in the same pytest-benchmark groups as
``qaclip_core`` and ``cn_clip``, so that ``tools/throughput_report.py`` prints our ratio to it.
Text is tokenized by a BERT tokenizer over the Chinese vocabulary and padded to the longest
caption of the batch, as ``ChineseCLIPProcessor(text=..., padding=True)`` does; the record says
how long that is (``padded_tokens``) and how many tokens are real (``mean_tokens``).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache

import pytest
import torch

from qaclip_core.registry import all_cards

from .test_throughput import _run
from .throughput_support import batch_sizes, device_precisions, is_large, models, realistic_captions

IMPL = "transformers"
SKIP_REASON = "ChineseCLIP throughput needs transformers: pip install 'qaclip-core[chineseclip]'"


def _architectures() -> list:
    """(id, VISION@TEXT) of the transformers-format cards, ids as test_throughput.py names them."""
    seen: dict[str, str] = {}
    for card in all_cards():
        if card.adapter == "chineseclip" and card.arch not in seen.values():
            seen["fixture" if card.test_only else card.vision.lower()] = card.arch
    return sorted(seen.items())


def _params(tower: str) -> list:
    return [
        pytest.param(
            arch,
            device,
            precision,
            batch,
            id=f"{arch_id}-{precision}-b{batch}-{IMPL}",
            marks=([pytest.mark.large_model] if is_large(arch) else [])
            + ([pytest.mark.peer_backend] if arch_id != "fixture" else []),
        )
        for arch_id, arch in _architectures()
        for device, precision in device_precisions()
        for batch in batch_sizes(device, tower)
    ]


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip with the install hint."""
    return pytest.importorskip("transformers", reason=SKIP_REASON, exc_type=ImportError)


@lru_cache(maxsize=1)
def _model(arch: str, device: str, precision: str):
    """ChineseCLIPModel holding the weights of test_throughput.py's models for ``arch`` (one cached at a time)."""
    import transformers as tf

    from qaclip_harness.convert.hf import hf_config, to_hf_state_dict

    ours, _ = models(arch, device, precision)
    with torch.device("meta"):  # no random initialisation: every weight is assigned below
        model = tf.ChineseCLIPModel(tf.ChineseCLIPConfig(**hf_config(arch)))
    sd = to_hf_state_dict({k: v.detach() for k, v in ours.state_dict().items()}, arch)
    model.load_state_dict(sd, strict=False, assign=True)
    # non-persistent buffers (position ids, token types) are not in a state dict: rebuild them
    for module in model.modules():
        for name in ("position_ids", "token_type_ids"):
            buf = getattr(module, name, None)
            if isinstance(buf, torch.Tensor) and buf.is_meta:
                ids = (
                    torch.arange(buf.shape[-1]).expand(buf.shape) if name == "position_ids" else torch.zeros(buf.shape)
                )
                module.register_buffer(name, ids.to(device=device, dtype=torch.long), persistent=False)
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise RuntimeError(f"ChineseCLIPModel tensors left unset by the conversion: {missing[:5]}")
    return model.eval()


@lru_cache(maxsize=1)
def _tokenizer():
    """The BERT tokenizer a ChineseCLIP folder carries (the Chinese vocabulary, lower-casing)."""
    import transformers as tf

    from qaclip_harness.convert.hf import write_tokenizer_files

    folder = tempfile.mkdtemp(prefix="qaclip-tokenizer-")
    write_tokenizer_files(folder, 512)
    return tf.AutoTokenizer.from_pretrained(folder)


def _info(tower: str, arch: str, batch: int, precision: str, device: str, tf) -> dict:
    return {
        "tower": tower,
        "arch": arch,
        "batch": batch,
        "precision": precision,
        "impl": IMPL,
        "device": device,
        "transformers": tf.__version__,
        "attention": "sdpa",
    }


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch", _params("image"))
def test_encode_image_chineseclip(benchmark, tf, arch, device, precision, batch):
    """Images per second of ChineseCLIPModel.get_image_features."""
    model = _model(arch, device, precision)
    res = model.config.vision_config.image_size
    dtype = next(model.parameters()).dtype
    images = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    benchmark.group = f"encode_image {arch} {precision} b{batch} {device}"
    _run(
        benchmark,
        lambda: model.get_image_features(pixel_values=images),
        device,
        batch,
        _info("image", arch, batch, precision, device, tf),
    )


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch", _params("text"))
def test_encode_text_chineseclip(benchmark, tf, arch, device, precision, batch):
    """Captions per second of ChineseCLIPModel.get_text_features, padded to the longest caption as its processor pads."""
    model = _model(arch, device, precision)
    enc = _tokenizer()(realistic_captions(batch), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    benchmark.group = f"encode_text {arch} {precision} b{batch} {device}"
    info = _info("text", arch, batch, precision, device, tf)
    info.update(mean_tokens=round(float(mask.sum(1).float().mean()), 1), padded_tokens=int(ids.shape[1]))
    _run(benchmark, lambda: model.get_text_features(input_ids=ids, attention_mask=mask), device, batch, info)
