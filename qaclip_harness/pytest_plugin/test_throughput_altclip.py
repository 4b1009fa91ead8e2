"""Throughput of the AltCLIP adapter (transformers) on a randomly initialised full-size AltCLIP.

Random weights of the real architecture (CLIP ViT-L/14 image tower, XLM-R large text tower, as
BAAI/AltCLIP's config.json) cost what the real ones cost, so these cases run on every machine that
has transformers. The groups follow ``test_throughput.py``'s scheme, with arch ``AltCLIP-ViT-L-14``.

Text cases use the real XLM-R tokenizer when an AltCLIP folder is on disk (``--checkpoint-dir``,
default ``~/.cache/qaclip/checkpoints``); otherwise a one-piece-per-character stand-in, which gives
at least as many tokens as XLM-R for Chinese captions (so its timings are an upper bound). The
record's ``tokenizer`` says which was used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

from .test_throughput import _run
from .throughput_support import batch_sizes, device_precisions, realistic_captions

ARCH = "AltCLIP-ViT-L-14"
CARD = "altclip-vit-l-14"
IMPL = "transformers"
RES = 224
SKIP_REASON = "AltCLIP throughput needs transformers: pip install 'qaclip-core[altclip]'"

# BAAI/AltCLIP's architecture. AltCLIPConfig() alone gives XLM-R large but a ViT-B/32 vision
# tower (CLIP's defaults), so the vision side is spelled out.
VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": RES,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
PROJECTION_DIM = 768


def _params(tower: str) -> list:
    return [
        # XLM-R large and a ViT-L/14 vision tower: a large model (see throughput_support.is_large)
        pytest.param(device, precision, batch, id=f"{CARD}-{precision}-b{batch}-{IMPL}", marks=pytest.mark.large_model)
        for device, precision in device_precisions()
        for batch in batch_sizes(device, tower)
    ]


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip with the install hint."""
    return pytest.importorskip("transformers", reason=SKIP_REASON)


def _char_tokenizer(tf):
    """XLM-R-style tokenizer with one piece per character of the realistic captions."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import Unigram

    chars = sorted(set("".join(realistic_captions(2000))) - {" "})
    vocab = [(s, 0.0) for s in ("<s>", "<pad>", "</s>", "<unk>")] + [("▁", -2.0)] + [(c, -5.0) for c in chars]
    tok = Tokenizer(Unigram([*vocab, ("<mask>", 0.0)], unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tf.XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def _tokenizer(tf, checkpoint_dir: Path):
    """(tokenizer, label): AltCLIP's own when its folder is on disk, else the per-character stand-in."""
    folder = checkpoint_dir / "AltCLIP"
    if (folder / "tokenizer.json").is_file() or (folder / "sentencepiece.bpe.model").is_file():
        try:
            return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True), "xlm-r"
        except (OSError, ValueError):
            pass
    return _char_tokenizer(tf), "per-character stand-in"


@lru_cache(maxsize=1)
def _encoder(device: str, precision: str, checkpoint_dir: str):
    """The adapter over a random full-size AltCLIP on ``device`` in ``precision`` (one cached at a time)."""
    import transformers as tf

    from qaclip_core.checkpoint import resolve_dtype
    from qaclip_harness.backends.altclip import AltCLIPEncoder, pil_image_processor_class

    config = tf.AltCLIPConfig(vision_config=VISION, projection_dim=PROJECTION_DIM)
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs: much faster on a GPU
        model = tf.AltCLIPModel(config)
    model = model.to(dtype=resolve_dtype(precision)).eval()  # type: ignore[call-arg]  # transformers wraps .to in a decorator mypy reads as unbound
    tokenizer, label = _tokenizer(tf, Path(checkpoint_dir))
    image_processor = pil_image_processor_class(tf)(
        size={"shortest_edge": RES}, crop_size={"height": RES, "width": RES}
    )
    return AltCLIPEncoder(model, image_processor, tokenizer, name=CARD), label


def _checkpoint_dir(config) -> str:
    from qaclip_core.pretrained import cache_root

    return str(Path(config.getoption("--checkpoint-dir") or cache_root() / "checkpoints").expanduser())


def _info(tower: str, batch: int, precision: str, tf) -> dict:
    return {
        "tower": tower,
        "arch": ARCH,
        "batch": batch,
        "precision": precision,
        "impl": IMPL,
        "transformers": tf.__version__,
    }


@pytest.mark.throughput
@pytest.mark.parametrize("device,precision,batch", _params("image"))
def test_encode_image_altclip(benchmark, request, tf, device, precision, batch):
    """Images per second of the adapter's encode_image."""
    encoder, _ = _encoder(device, precision, _checkpoint_dir(request.config))
    images = torch.randn(batch, 3, RES, RES, generator=torch.Generator().manual_seed(0)).to(device, encoder.dtype)
    benchmark.group = f"encode_image {ARCH} {precision} b{batch} {device}"
    _run(benchmark, lambda: encoder.encode_image(images), device, batch, _info("image", batch, precision, tf))


@pytest.mark.throughput
@pytest.mark.parametrize("device,precision,batch", _params("text"))
def test_encode_text_altclip(benchmark, request, tf, device, precision, batch):
    """Captions per second of the adapter's encode_text on realistic Chinese captions (padded to 77, trimmed)."""
    encoder, label = _encoder(device, precision, _checkpoint_dir(request.config))
    tokens = encoder.tokenize(realistic_captions(batch)).to(device)
    benchmark.group = f"encode_text {ARCH} {precision} b{batch} {device}"
    info = _info("text", batch, precision, tf)
    info.update(tokenizer=label, mean_tokens=round(float(encoder.attention_mask(tokens).sum(1).float().mean()), 1))
    _run(benchmark, lambda: encoder.encode_text(tokens), device, batch, info)
