"""The encoder interface every backend implements: what the evaluation, the suite and the timing code call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


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
