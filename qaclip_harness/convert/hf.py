"""Reference-format checkpoints (QA-CLIP / Chinese-CLIP ``.pt``) to transformers' ``ChineseCLIPModel`` layout.

    python -m qaclip_harness.convert.hf QA-CLIP-base.pt out/qa-clip-vit-b-16-hf [--arch VISION@TEXT] [--dtype fp16]

The key mapping (:func:`to_hf_state_dict`) and the config (:func:`hf_config`) need only torch;
writing a folder (:func:`write_hf_folder`) needs ``transformers`` and writes ``config.json``,
``model.safetensors``, the tokenizer files (this package's pinned ``vocab.txt``, lower-casing as
the reference does) and an image processor config that comes as close to the reference
transform as ``ChineseCLIPImageProcessor`` can: a squash resize to R x R, bicubic, no centre
crop, the OpenAI-CLIP mean and std. ``ChineseCLIPModel`` has no ResNet tower, so RN50 models
cannot be converted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Union, cast

import torch

from qaclip_core.errors import CheckpointError
from qaclip_core.model.config import ArchConfig, arch_config
from qaclip_core.transforms import MEAN, STD

PathLike = Union[str, Path]
INSTALL_HINT = "pip install 'qaclip-core[chineseclip]'"

# (pattern on a reference key, replacement); applied in order, the first match wins. Keys that
# need a transpose or a split are handled by SPECIAL below.
RENAMES: list[tuple[str, str]] = [
    (r"^bert\.", "text_model."),
    (r"^logit_scale$", "logit_scale"),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.conv1\.weight$", "vision_model.embeddings.patch_embedding.weight"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
    (
        r"^visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.",
        r"vision_model.encoder.layers.\1.self_attn.out_proj.",
    ),
    (r"^visual\.transformer\.resblocks\.(\d+)\.ln_1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.ln_2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"vision_model.encoder.layers.\1.mlp.fc1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"vision_model.encoder.layers.\1.mlp.fc2."),
]
_IN_PROJ = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _transpose(name: str) -> Callable[[str, torch.Tensor], dict[str, torch.Tensor]]:
    # the reference multiplies x @ P; nn.Linear computes x @ W.T, so W = P.T
    return lambda key, t: {name: t.t().contiguous()}


def _split_in_proj(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    # nn.MultiheadAttention packs the query, key and value projections as rows [q; k; v]
    m = _IN_PROJ.match(key)
    assert m is not None, key  # called only for the keys _IN_PROJ matched
    layer, kind = m.groups()
    q, k, v = t.chunk(3, dim=0)
    prefix = f"vision_model.encoder.layers.{layer}.self_attn"
    return {
        f"{prefix}.q_proj.{kind}": q.contiguous(),
        f"{prefix}.k_proj.{kind}": k.contiguous(),
        f"{prefix}.v_proj.{kind}": v.contiguous(),
    }


SPECIAL: dict[str, Callable[[str, torch.Tensor], dict[str, torch.Tensor]]] = {
    "text_projection": _transpose("text_projection.weight"),
    "visual.proj": _transpose("visual_projection.weight"),
}


def _arch(arch: str | ArchConfig) -> ArchConfig:
    cfg = arch_config(arch) if isinstance(arch, str) else arch
    if cfg.vision.kind != "vit":
        raise CheckpointError(
            f"architecture {cfg.name}: transformers' ChineseCLIPModel has only a ViT vision tower, "
            f"so {cfg.vision.name} models cannot be converted"
        )
    return cfg


def hf_config(arch: str | ArchConfig) -> dict:
    """Keyword arguments of ``transformers.ChineseCLIPConfig`` for ``arch`` (a ViT architecture)."""
    cfg = _arch(arch)
    v, t = cfg.vision, cfg.text
    return {
        "text_config": {
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.max_positions,
            "type_vocab_size": t.type_vocab_size,
            "layer_norm_eps": t.layer_norm_eps,
            "hidden_act": "gelu",  # exact (erf) GELU, as BERT
            "pad_token_id": 0,
        },
        "vision_config": {
            "hidden_size": v.width,
            "intermediate_size": 4 * v.width,
            "num_hidden_layers": int(cast(int, v.layers)),  # a ViT: _arch refuses the ResNets
            "num_attention_heads": v.heads,
            "patch_size": v.patch_size,
            "image_size": v.image_size,
            "projection_dim": v.embed_dim,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,  # torch's LayerNorm default, which the reference ViT uses
        },
        "projection_dim": v.embed_dim,
    }


def to_hf_state_dict(sd: Mapping[str, torch.Tensor], arch: str | ArchConfig) -> dict[str, torch.Tensor]:
    """The reference state dict ``sd`` (keys as :func:`qaclip_core.read_state_dict` returns them) in transformers' names."""
    cfg = _arch(arch)
    _check_fits(sd, cfg)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in SPECIAL:
            out.update(SPECIAL[key](key, tensor))
        elif _IN_PROJ.match(key):
            out.update(_split_in_proj(key, tensor))
        else:
            for pattern, repl in RENAMES:
                if re.match(pattern, key):
                    out[re.sub(pattern, repl, key)] = tensor
                    break
            else:
                raise CheckpointError(f"no transformers name for checkpoint key {key!r}")
    return out


def _check_fits(sd: Mapping[str, torch.Tensor], cfg: ArchConfig) -> None:
    """Every key and shape of ``sd`` is the architecture's (CheckpointError naming what is not)."""
    from qaclip_core.checkpoint import load_state_dict_strict
    from qaclip_core.model.clip import CLIP

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = CLIP(cfg)
    load_state_dict_strict(model, {k: v.to("meta") for k, v in sd.items()}, source="checkpoint")


def _import_transformers():
    from qaclip_harness.optional import import_transformers

    return import_transformers("ChineseCLIP", INSTALL_HINT, extra="chineseclip")


def write_tokenizer_files(out_dir: PathLike, max_length: int) -> None:
    """The reference vocabulary and a tokenizer config that lower-cases as the reference does."""
    from qaclip_core.tokenizer import VOCAB_PATH

    out_dir = Path(out_dir)
    shutil.copyfile(VOCAB_PATH, out_dir / "vocab.txt")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": int(max_length),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def image_processor(transformers: Any, resolution: int) -> Any:
    """``ChineseCLIPImageProcessor`` configured as close to the reference transform as it allows."""
    return transformers.ChineseCLIPImageProcessor(
        do_resize=True,
        size={"height": resolution, "width": resolution},
        resample=3,  # PIL bicubic
        do_center_crop=False,
        crop_size={"height": resolution, "width": resolution},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(MEAN),
        image_std=list(STD),
        do_convert_rgb=True,
    )


def write_hf_folder(
    checkpoint: PathLike | Mapping[str, torch.Tensor],
    out_dir: PathLike,
    arch: str | None = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> Path:
    """Write ``checkpoint`` (a file or a state dict) as a transformers ``ChineseCLIPModel`` folder.

    ``arch`` is inferred from the weights when None. With ``verify`` the folder is loaded back
    and must have exactly the model's keys (transformers would otherwise fill gaps at random).
    """
    from safetensors.torch import save_file

    from qaclip_core.checkpoint import infer_arch, normalise_state_dict, read_state_dict

    transformers = _import_transformers()
    # a mapping may be the training code's dict or a bare state dict, with or without "module."
    sd = (
        normalise_state_dict(checkpoint, "state dict")
        if isinstance(checkpoint, Mapping)
        else read_state_dict(checkpoint)
    )
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    arch = arch or infer_arch(sd)
    if arch is None or "(" in arch:
        raise CheckpointError(f"{source}: cannot tell its architecture; pass arch='VISION@TEXT'")
    cfg = _arch(arch)
    hf_sd = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in to_hf_state_dict(sd, cfg).items()
    }
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    config = transformers.ChineseCLIPConfig(**hf_config(cfg))
    config.architectures = ["ChineseCLIPModel"]
    config.save_pretrained(out)
    save_file(hf_sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer_files(out, cfg.text.max_positions)
    image_processor(transformers, cfg.vision.image_size).save_pretrained(out)
    if verify:
        verify_folder(out)
    return out


def verify_folder(folder: PathLike) -> None:
    """Load ``folder`` with transformers; any missing, unexpected or mis-shaped key is a CheckpointError."""
    from qaclip_harness.backends.chineseclip import load_model

    load_model(_import_transformers(), str(folder), {"local_files_only": True}, torch.float32)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert one checkpoint file into a folder."""
    from qaclip_core.checkpoint import DTYPES

    parser = argparse.ArgumentParser(prog="python -m qaclip_harness.convert.hf", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="reference-format .pt (the training code's dict or a bare state dict)")
    parser.add_argument("out_dir", help="folder to write (created)")
    parser.add_argument("--arch", help="VISION@TEXT; inferred from the weights when omitted")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights")
    args = parser.parse_args(argv)
    out = write_hf_folder(args.checkpoint, args.out_dir, arch=args.arch, dtype=DTYPES[args.dtype])
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
