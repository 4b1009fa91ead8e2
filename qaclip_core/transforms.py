"""Image preprocessing: the reference's squash-resize, RGB conversion and CLIP normalisation."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (palette, RGBA, CMYK, grayscale, 16-bit) to RGB, as the reference does."""
    return image.convert("RGB")


def image_transform(image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised [3, R, R] tensor.

    The order matters for parity: the reference resizes (bicubic, no crop) *before* converting
    to RGB, which for palette and 1-bit images means PIL's nearest-neighbour resize.
    """
    return Compose(
        [
            Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
            to_rgb,
            ToTensor(),
            Normalize(MEAN, STD),
        ]
    )
