"""Image preprocessing: the reference's squash-resize, RGB conversion and CLIP normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (palette, RGBA, CMYK, grayscale, 16-bit) to RGB, as the reference does."""
    return image.convert("RGB")


class ClipImageTransform(Compose):
    """The reference transform as a torchvision ``Compose``, plus :meth:`into` for batch loaders.

    The order matters for parity: the reference resizes (bicubic, no crop) *before* converting
    to RGB, which for palette and 1-bit images means PIL's nearest-neighbour resize.
    """

    def __init__(self, image_size: int = 224):
        self.image_size = image_size
        self.resize = Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC)
        self.normalize = Normalize(MEAN, STD)
        super().__init__([self.resize, to_rgb, ToTensor(), self.normalize])  # type: ignore[no-untyped-call]  # torchvision: no annotations
        # the same float32 constants and the same three rounded operations as ToTensor + Normalize
        self._mean = np.asarray(self.normalize.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.normalize.std, dtype=np.float32).reshape(3, 1, 1)
        self._tables: dict[torch.device, torch.Tensor] = {}  # device -> the [3 * 256] lookup table of from_pixels

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one transformed image."""
        return (3, self.image_size, self.image_size)

    def into(self, image: Image.Image, out: torch.Tensor) -> torch.Tensor:
        """Write the transform of ``image`` into ``out`` (a float32 CPU slot of a batch), bit-equal to ``self(image)``.

        Loaders call this from worker threads: PIL and NumPy release the GIL, writing in place
        saves the intermediate tensors and the final stack, and NumPy (unlike torch) runs the
        arithmetic in the calling thread instead of starting a thread team per worker.
        """
        slot = out.numpy()
        np.copyto(slot, self.pixels(image).transpose(2, 0, 1), casting="unsafe")
        np.divide(slot, np.float32(255), out=slot)
        np.subtract(slot, self._mean, out=slot)
        np.divide(slot, self._std, out=slot)
        return out

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The resized RGB image as [R, R, 3] uint8: the last step that depends on PIL (what a pixel cache keeps)."""
        return np.asarray(to_rgb(self.resize(image)))

    def from_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """[N, R, R, 3] uint8 from :meth:`pixels` (on any device) -> [N, 3, R, R] float32, bit-equal to ``self(image)``.

        A channel's output depends only on its uint8 value, so the reference's own ``ToTensor``
        and ``Normalize``, applied once on the CPU to the 256 values of each channel, give a table
        that a lookup then applies on the batch's device: no device arithmetic whose rounding
        could differ from the CPU's.
        """
        table = self._tables.get(batch.device)
        if table is None:
            ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 256, 1), 3, axis=2)
            table = self.normalize(ToTensor()(Image.fromarray(ramp))).reshape(3 * 256).to(batch.device)
            self._tables[batch.device] = table
        offsets = torch.arange(0, 3 * 256, 256, device=batch.device).view(1, 3, 1, 1)
        out: torch.Tensor = table.take(batch.permute(0, 3, 1, 2).to(torch.int64) + offsets)
        return out


def image_transform(image_size: int = 224) -> ClipImageTransform:
    """PIL image -> normalised [3, R, R] tensor, as the reference preprocesses."""
    return ClipImageTransform(image_size)
