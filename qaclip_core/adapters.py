"""The encoder interface the evaluation uses, and its implementation for ``qaclip_core`` models.

Foreign models (AltCLIP through transformers) implement the same four members, so the suite
evaluates every model with the same data, metrics and timing code.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from PIL import Image

from .checkpoint import load_checkpoint, resolve_device, resolve_dtype
from .model.clip import CLIP
from .registry import ModelCard
from .tokenizer import preprocess_text, tokenize
from .transforms import image_transform


@runtime_checkable
class Encoder(Protocol):
    """What the evaluation needs from a model."""

    name: str
    device: torch.device
    dtype: torch.dtype

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> model input tensor [3, R, R]."""

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw captions or prompts -> token ids, with the model's own text normalisation."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Batch of preprocessed images (any device) -> unnormalised features."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Batch of token ids (any device) -> unnormalised features."""


class NativeEncoder:
    """A ``qaclip_core`` CLIP model behind the :class:`Encoder` interface."""

    def __init__(self, model: CLIP, name: str = "model", context_length: int = 52, compile: bool = False):
        self.model = model.eval()
        self.name = name
        self.context_length = context_length
        # torch.compile of the vision tower only: its shapes are fixed by the batch size, while
        # the packed text path has data-dependent shapes that would recompile for every batch
        self._visual = torch.compile(model.visual) if compile else model.visual
        self.compiled = compile
        # the transform object itself (not a method wrapping it), so loaders can use its ``into``
        self.preprocess = image_transform(model.image_size)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.model.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.model.dtype

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Lower-case, normalise quotes, WordPiece: what the evaluation scripts feed the model."""
        return tokenize([preprocess_text(str(t)) for t in texts], context_length=self.context_length)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] in the model's dtype."""
        return self._visual(images.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [N, D] in the model's dtype."""
        return self.model.encode_text(tokens.to(self.device, non_blocking=True))


def fetch_weights(card: ModelCard, download_root: Optional[Union[str, Path]] = None, endpoint: Optional[str] = None) -> Path:
    """Local path of ``card``'s weights (a file, or a folder for adapter models), fetched when absent."""
    if card.adapter == "altclip":
        from .altclip import fetch_altclip

        return fetch_altclip(card, download_root=download_root)
    from .hub import fetch_checkpoint

    return fetch_checkpoint(card, download_root=download_root, endpoint=endpoint)


def load_encoder(
    card: ModelCard,
    checkpoint: Union[str, Path],
    device: Union[str, torch.device] = "auto",
    precision: str = "fp32",
    compile: bool = False,
) -> Encoder:
    """Load ``checkpoint`` as the model ``card`` describes, behind the Encoder interface.

    ``compile`` runs the vision tower through ``torch.compile`` (native models only).
    """
    if card.adapter == "altclip":
        from .altclip import AltCLIPEncoder  # optional dependency: transformers

        if compile:
            warnings.warn(f"{card.name}: compile applies to qaclip_core models only; running eagerly", UserWarning, stacklevel=2)
        return AltCLIPEncoder.from_pretrained(checkpoint, name=card.name, device=device, precision=precision)
    model = load_checkpoint(checkpoint, card.arch, device=resolve_device(device), precision=resolve_dtype(precision))
    return NativeEncoder(model, name=card.name, compile=compile)
