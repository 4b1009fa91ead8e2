"""Probe-set features of any model: our encoders through the :class:`Encoder` interface, references through their own code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from qaclip_harness.eval.features import encode_texts
from qaclip_harness.probe import ProbeSet
from qaclip_harness.tensors import normalise


@runtime_checkable
class FeatureSource(Protocol):
    """Something that turns raw images and captions into normalised fp32 features, with its own preprocessing."""

    name: str

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] normalised fp32 features on the CPU."""

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """[M, D] normalised fp32 features on the CPU."""


class EncoderSource:
    """An :class:`~qaclip_harness.backends.base.Encoder` (any backend) as a feature source: its preprocess, tokenizer and towers."""

    def __init__(self, encoder, batch_size: int = 32, text_batch_size: int = 256):
        self.encoder = encoder
        self.name = getattr(encoder, "name", type(encoder).__name__)
        self.batch_size = max(1, int(batch_size))
        self.text_batch_size = max(1, int(text_batch_size))

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess each image, encode in batches, normalise."""
        pixels = torch.stack([self.encoder.preprocess(im) for im in images])
        outs = [
            normalise(self.encoder.encode_image(pixels[i : i + self.batch_size])).cpu()
            for i in range(0, len(pixels), self.batch_size)
        ]
        return torch.cat(outs)

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """The encoder's own tokenizer and text tower, as the evaluation runs them."""
        return encode_texts(self.encoder, list(captions), batch_size=self.text_batch_size, progress=False)


@dataclass
class ProbeFeatures:
    """Normalised fp32 features of every probe image and caption, with their names."""

    image_names: list[str]
    captions: list[str]
    image: torch.Tensor
    text: torch.Tensor

    def tower(self, name: str) -> tuple[torch.Tensor, list[str]]:
        """Features and item names of tower ``image`` or ``text``."""
        if name == "image":
            return self.image, self.image_names
        if name == "text":
            return self.text, [repr(c) if len(c) <= 24 else repr(c[:21] + "...") for c in self.captions]
        raise ValueError(f"unknown tower {name!r} (expected 'image' or 'text')")

    def scores(self) -> torch.Tensor:
        """Caption x image cosine similarities [M, N] in float64."""
        return self.text.double() @ self.image.double().t()


def probe_features(source: FeatureSource, probe: ProbeSet) -> ProbeFeatures:
    """Encode the whole probe set with ``source``."""
    with torch.inference_mode():
        image = source.image_features(list(probe.images)).float().cpu()
        text = source.text_features(list(probe.captions)).float().cpu()
    for what, feats, n in (("image", image, len(probe.images)), ("text", text, len(probe.captions))):
        if feats.dim() != 2 or feats.shape[0] != n:
            raise ValueError(f"{source.name}: {what} features of shape {tuple(feats.shape)} for {n} probe items")
    return ProbeFeatures(list(probe.image_names), list(probe.captions), image, text)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and cuDNN convolutions on or off (CUDA), restored afterwards; nothing changes on a CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
