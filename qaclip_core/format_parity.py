"""Do two formats of one checkpoint give the same features? (the ``.pt`` natively vs its transformers folder)

:func:`probe_inputs` is the fixed input set (the README example image, generated images of
several sizes and modes, captions of several lengths); :func:`compare_encoders` feeds the same
preprocessed pixels and token ids to two encoders and returns the largest difference of their
normalised features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from .probe import EXAMPLE_IMAGE

# Captions of several lengths: the README example's labels, everyday captions, punctuation and
# Latin text (lower-casing), curly quotes (folded by the reference), and one far beyond 50 word
# pieces (truncation).
PROBE_CAPTIONS = [
    "杰尼龟",
    "妙蛙种子",
    "小火龙",
    "皮卡丘",
    "一只橘猫趴在窗台上晒太阳",
    "两个小孩在海边的沙滩上堆沙堡，阳光明媚",
    "“你好”，他说。",
    "Nike 男款跑步鞋 2023新款 透气网面 ABC",
    "一群人在公园里打太极拳，背景是高楼大厦，天空中飘着几朵白云，远处还有一座古老的宝塔和一条蜿蜒的小河，"
    "河边停着几艘小船，岸上的柳树随风摆动，孩子们在草地上放风筝，老人们坐在长椅上聊天",
    "",
]


def _generated_images(seed: int = 0) -> List[Image.Image]:
    """Drawn and noise images of varied sizes, aspect ratios and modes, deterministic."""
    rng = np.random.default_rng(seed)
    out = []
    for (w, h), colour in (((320, 240), (220, 30, 30)), ((97, 411), (30, 30, 220)), ((600, 50), (250, 200, 0))):
        img = Image.new("RGB", (w, h), (240, 240, 240))
        d = ImageDraw.Draw(img)
        d.ellipse((w // 6, h // 6, 5 * w // 6, 5 * h // 6), fill=colour)
        for x in range(0, w, 7):
            d.line([(x, 0), (w - x, h)], fill=(x % 255, 90, 160), width=1)
        out.append(img)
    out.append(Image.fromarray(rng.integers(0, 256, (150, 180, 3), dtype=np.uint8)))  # noise
    out.append(Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)))  # grey
    out.append(out[0].convert("P", palette=Image.ADAPTIVE))  # palette
    return out


def probe_inputs() -> Tuple[List[Image.Image], List[str]]:
    """The images and captions both formats are compared on."""
    with Image.open(EXAMPLE_IMAGE) as im:
        example = im.convert("RGB")
    return [example] + _generated_images(), list(PROBE_CAPTIONS)


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


def _normalised(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def encode_probe(encoder, images: Sequence[Image.Image], captions: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, tokens, normalised image features, normalised text features) of ``encoder`` on the inputs."""
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    tokens = encoder.tokenize(list(captions))
    with torch.inference_mode():
        img = _normalised(encoder.encode_image(pixels)).cpu()
        txt = _normalised(encoder.encode_text(tokens)).cpu()
    return pixels, tokens, img, txt


def compare_encoders(first, second, images: Sequence[Image.Image], captions: Sequence[str]) -> FeatureParity:
    """Features of two encoders on the same inputs; their preprocessing must give the same pixels and tokens.

    Different inputs would mean the encoders do not share a protocol, and a feature difference
    would then say nothing about the weights: that is a ValueError.
    """
    p1, t1, i1, x1 = encode_probe(first, images, captions)
    p2, t2, i2, x2 = encode_probe(second, images, captions)
    if not torch.equal(p1, p2):
        raise ValueError(f"{first.name} and {second.name} preprocess the probe images differently "
                         f"(max {float((p1 - p2).abs().max()):.3g}); compare them with one protocol")
    if t1.shape != t2.shape or not torch.equal(t1, t2):
        raise ValueError(f"{first.name} and {second.name} tokenize the probe captions differently; "
                         f"compare them with one protocol")
    return FeatureParity(float((i1 - i2).abs().max()), float((x1 - x2).abs().max()), len(images), len(captions))
