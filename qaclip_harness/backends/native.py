"""The ``qaclip_core`` model behind the :class:`~qaclip_harness.backends.base.Encoder` interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from qaclip_core.checkpoint import load_checkpoint, resolve_device, resolve_dtype
from qaclip_core.model.clip import CLIP
from qaclip_core.registry import ModelCard
from qaclip_core.tokenizer import CONTEXT_LENGTH, preprocess_text, tokenize
from qaclip_core.transforms import image_transform


class NativeEncoder:
    """A ``qaclip_core`` CLIP model behind the :class:`Encoder` interface."""

    def __init__(self, model: CLIP, name: str = "model", context_length: int = CONTEXT_LENGTH, compile: bool = False):
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


def load(
    card: ModelCard,
    path: str | Path,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    compile: bool = False,
) -> NativeEncoder:
    """Load the checkpoint at ``path`` as the architecture ``card`` names."""
    model = load_checkpoint(path, card.arch, device=resolve_device(device), precision=resolve_dtype(precision))
    return NativeEncoder(model, name=card.name, compile=compile)
