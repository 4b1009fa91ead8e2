"""Architecture configs: JSON files under ``configs/`` named after the tower they describe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError

CONFIG_DIR = Path(__file__).parent / "configs"
# folders searched for ``<kind>/<name>.json``, the package's own first (add_config_dir adds more)
_CONFIG_DIRS: list[Path] = [CONFIG_DIR]


def add_config_dir(path: str | Path) -> None:
    """Also look for tower configs in ``path`` (``vision/*.json``, ``text/*.json``), as open_clip's add_model_config."""
    path = Path(path).resolve()
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)
        vision_config.cache_clear()
        text_config.cache_clear()


@dataclass(frozen=True)
class VisionConfig:
    """One vision tower: a ModifiedResNet (``kind: resnet``) or a ViT (``kind: vit``)."""

    name: str
    kind: str
    embed_dim: int
    image_size: int
    layers: int | tuple[int, ...]
    width: int
    head_width: int = 64
    patch_size: int | None = None

    @property
    def heads(self) -> int:
        """Number of attention heads (of the attention pool for a ResNet)."""
        if self.kind == "resnet":
            return self.width * 32 // self.head_width
        return self.width // self.head_width


@dataclass(frozen=True)
class TextConfig:
    """One BERT text tower."""

    name: str
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class ArchConfig:
    """A full CLIP architecture, named ``VISION@TEXT`` like the reference does."""

    vision: VisionConfig
    text: TextConfig
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The ``VISION@TEXT`` name."""
        return f"{self.vision.name}@{self.text.name}"


def _names(kind: str) -> list[str]:
    return sorted({p.stem for d in _CONFIG_DIRS for p in (d / kind).glob("*.json")})


def vision_names() -> list[str]:
    """Names of the vision towers with a config file."""
    return _names("vision")


def text_names() -> list[str]:
    """Names of the text towers with a config file."""
    return _names("text")


def _read(kind: str, name: str) -> dict[str, Any]:
    candidates = [d / kind / f"{name.replace('/', '-')}.json" for d in _CONFIG_DIRS]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = ", ".join(_names(kind))
        raise UnknownModelError(f"unknown {kind} tower {name!r}; known {kind} towers: {known}")
    with open(path, encoding="utf-8") as f:
        out: dict[str, Any] = json.load(f)
        return out


@cache
def vision_config(name: str) -> VisionConfig:
    """Read the config of vision tower ``name`` (for example ``ViT-B-16``)."""
    raw = _read("vision", name)
    if isinstance(raw.get("layers"), list):
        raw["layers"] = tuple(raw["layers"])
    return VisionConfig(name=name.replace("/", "-"), **raw)


@cache
def text_config(name: str) -> TextConfig:
    """Read the config of text tower ``name`` (for example ``RBT3-chinese``)."""
    return TextConfig(name=name, **_read("text", name))


def arch_config(arch: str) -> ArchConfig:
    """Parse ``VISION@TEXT`` (for example ``RN50@RBT3-chinese``) into an :class:`ArchConfig`."""
    if arch.count("@") != 1:
        raise ValueError(
            f"architecture {arch!r} must be written VISION@TEXT, for example "
            f"'ViT-B-16@RoBERTa-wwm-ext-base-chinese'; vision towers: {', '.join(vision_names())}; "
            f"text towers: {', '.join(text_names())}"
        )
    vision, text = arch.split("@")
    return ArchConfig(vision=vision_config(vision), text=text_config(text))


def reference_kwargs(arch: str) -> dict[str, Any]:
    """Keyword arguments of the reference's ``cn_clip.clip.model.CLIP`` for ``arch``.

    For architectures the reference ships no config for (the fixture), so that tests and
    benchmarks can build its twin; dropout values are its defaults and do not act in eval mode.
    """
    cfg = arch_config(arch)
    v, t = cfg.vision, cfg.text
    return {
        "embed_dim": v.embed_dim,
        "image_resolution": v.image_size,
        "vision_layers": v.layers,
        "vision_width": v.width,
        "vision_patch_size": v.patch_size,
        "vision_head_width": v.head_width,
        "vocab_size": t.vocab_size,
        "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": "gelu",
        "text_hidden_dropout_prob": 0.1,
        "text_hidden_size": t.hidden_size,
        "text_initializer_range": 0.02,
        "text_intermediate_size": t.intermediate_size,
        "text_max_position_embeddings": t.max_positions,
        "text_num_attention_heads": t.heads,
        "text_num_hidden_layers": t.layers,
        "text_type_vocab_size": t.type_vocab_size,
    }
