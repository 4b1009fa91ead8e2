"""Reference (cn_clip) models with every float tensor random, and checkpoints written the way its training code writes them.

cn_clip's own initialisation hides bugs: it zeroes every ResNet ``bn3`` weight (so a
bottleneck's residual branch is switched off) and leaves BatchNorm statistics at 0/1, linear
biases at 0 and LayerNorms at 1/0. A model that forgets a ReLU inside the bottleneck, a
LayerNorm bias or a linear bias would still match such a reference exactly. Every parity test
therefore builds its reference through :func:`reference_model`, which overwrites every float
parameter and buffer (BatchNorm running statistics included) with random values.
"""

from __future__ import annotations

import contextlib
import io
from itertools import chain
from pathlib import Path

import torch

from tests.conftest import require_reference

# name fragments of normalisation layers (their weight is a scale, so it is drawn around 1)
_NORM_MARKERS = ("bn", "ln_", "LayerNorm", "downsample.1", "layer_norm", "layernorm", "layrnorm")


def _random_values(name: str, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values for the tensor ``name``, on a scale that keeps activations finite and informative."""
    leaf = name.rsplit(".", 1)[-1]
    shape = like.shape

    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    if leaf == "running_var":
        return uniform(0.5, 2.0)  # a variance: positive
    if leaf == "running_mean":
        return normal(0.3)
    if like.dim() == 0:  # logit_scale
        return uniform(2.0, 4.6)
    if "embedding" in name:  # token, position, type, class and attention-pool position embeddings
        return normal(0.5)
    if like.dim() == 1 and leaf == "weight" and any(m in name for m in _NORM_MARKERS):
        return uniform(0.5, 1.5)
    if like.dim() == 1:  # biases of linear, norm and projection layers
        return normal(0.2)
    fan_in = like.numel() // shape[0]
    return normal(fan_in**-0.5)


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every float parameter and buffer of ``model`` with seeded random values (dtypes kept)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in chain(model.named_parameters(), model.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(_random_values(name, tensor, gen).to(tensor.dtype))
    return model


def reference_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A cn_clip model of ``VISION@TEXT`` with every float tensor random (fp16 storage, as cn_clip builds it).

    Architectures cn_clip ships no config for (the fixture) are built from our config through
    :func:`qaclip_core.model.config.reference_kwargs`.
    """
    require_reference()
    from cn_clip.clip.model import CLIP as RefCLIP
    from cn_clip.clip.model import convert_weights
    from cn_clip.clip.utils import create_model

    from qaclip_core.model.config import reference_kwargs

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its config
        try:
            model = create_model(arch)
        except AssertionError:  # cn_clip asserts its config file exists
            model = RefCLIP(**reference_kwargs(arch))
            convert_weights(model)
    return randomise_(model, seed).eval()


def save_reference_checkpoint(model: torch.nn.Module, path: Path, ddp_prefix: bool = True) -> Path:
    """Write ``model`` as cn_clip's training loop saves checkpoints (DDP ``module.`` keys)."""
    prefix = "module." if ddp_prefix else ""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(
        {
            "epoch": 3,
            "step": 1234,
            "name": "parity",
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )
    return path


def reference_with_checkpoint(arch: str, path: Path, seed: int = 0) -> tuple[torch.nn.Module, Path]:
    """A random reference model in fp32 (as its eval scripts run it) and its checkpoint on disk."""
    require_reference()
    model = reference_model(arch, seed)
    save_reference_checkpoint(model, path)
    return model.float(), path


def write_tiny_altclip(out: Path, captions, seed: int = 0, resolution: int = 32) -> Path:
    """A tiny AltCLIP with every float tensor random, saved by transformers as BAAI/AltCLIP is laid out.

    Its tokenizer is an XLM-R-style Unigram model over the characters of ``captions`` (the real
    one has 250k pieces); the image processor is CLIP's at ``resolution`` px.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0..3: the pad id is 1
    chars = sorted(set("".join(captions)) - set(" \t\n") - set("".join(specials)))
    vocab = [(s, 0.0) for s in specials] + [("▁", -2.0)] + [(c, -5.0) for c in chars] + [("<mask>", 0.0)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = transformers.XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    config = transformers.AltCLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 96,
            "project_dim": 32,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": resolution,
            "patch_size": 8,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = randomise_(transformers.AltCLIPModel(config), seed).eval()
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution}, resample=3
    )
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
