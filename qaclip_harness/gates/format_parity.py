"""Do two formats of one checkpoint give the same features? (the ``.pt`` natively vs its transformers folder)

:func:`probe_inputs` is the fixed input set (the pinned probe set: the README example image,
images of every size, mode and format the preprocessing meets, captions of every length);
:func:`compare_encoders` feeds the same preprocessed pixels and token ids to two encoders and
returns the largest difference of their normalised features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from qaclip_harness.probe import load_probe_set
from qaclip_harness.tensors import normalise


def probe_inputs() -> tuple[list[Image.Image], list[str]]:
    """The images and captions both formats are compared on: the pinned probe set (qaclip_core/probe)."""
    probe = load_probe_set()
    return list(probe.images), list(probe.captions)


@dataclass(frozen=True)
class FeatureParity:
    """Largest absolute difference of the normalised features of two encoders on the same inputs."""

    image_max_abs_diff: float
    text_max_abs_diff: float
    images: int
    captions: int

    def within(self, tolerance: float) -> bool:
        """Both differences within ``tolerance``."""
        return max(self.image_max_abs_diff, self.text_max_abs_diff) <= tolerance


def encode_probe(
    encoder, images: Sequence[Image.Image], captions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, tokens, normalised image features, normalised text features) of ``encoder`` on the inputs."""
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    tokens = encoder.tokenize(list(captions))
    with torch.inference_mode():
        img = normalise(encoder.encode_image(pixels)).cpu()
        txt = normalise(encoder.encode_text(tokens)).cpu()
    return pixels, tokens, img, txt


def compare_encoders(first, second, images: Sequence[Image.Image], captions: Sequence[str]) -> FeatureParity:
    """Features of two encoders on the same inputs; their preprocessing must give the same pixels and tokens.

    Different inputs would mean the encoders do not share a protocol, and a feature difference
    would then say nothing about the weights: that is a ValueError.
    """
    p1, t1, i1, x1 = encode_probe(first, images, captions)
    p2, t2, i2, x2 = encode_probe(second, images, captions)
    if not torch.equal(p1, p2):
        raise ValueError(
            f"{first.name} and {second.name} preprocess the probe images differently "
            f"(max {float((p1 - p2).abs().max()):.3g}); compare them with one protocol"
        )
    if t1.shape != t2.shape or not torch.equal(t1, t2):
        raise ValueError(
            f"{first.name} and {second.name} tokenize the probe captions differently; compare them with one protocol"
        )
    return FeatureParity(float((i1 - i2).abs().max()), float((x1 - x2).abs().max()), len(images), len(captions))
