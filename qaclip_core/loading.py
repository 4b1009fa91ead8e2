"""``load_from_name``: registry name or local file -> (model, preprocess)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .errors import UnknownModelError
from .model.clip import CLIP
from .registry import available_models, get_card
from .transforms import image_transform


def load_from_name(
    name: str,
    device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",  # noqa: B008 -- the seed's signature
    download_root: str | Path | None = None,
    vision_model_name: str | None = None,
    text_model_name: str | None = None,
    input_resolution: int | None = None,
    precision: str = "fp32",
) -> tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """Fetch (or find) a checkpoint by registry name, or open a local file, and load it.

    Returns ``(model, preprocess)``. The model is in eval mode, in ``precision`` (fp32 as the
    published evaluation), on ``device``.
    """
    if os.path.isfile(name):
        arch = f"{vision_model_name}@{text_model_name}" if vision_model_name and text_model_name else None
        model = load_checkpoint(name, arch, device=device, precision=precision)
        return model, image_transform(input_resolution or model.image_size)
    card = get_card(name)
    if card.adapter != "native":
        raise UnknownModelError(
            f"{name!r} is a {card.adapter} model evaluated through an adapter, not a Chinese-CLIP checkpoint; "
            f"load it with qaclip_harness.backends.load_encoder (the suite's backends) or the qaclip command. load_from_name accepts: "
            f"{', '.join(available_models())}"
        )
    from .pretrained import fetch_checkpoint  # deferred: huggingface_hub is slow to import

    path = fetch_checkpoint(card, download_root=download_root)
    model = load_checkpoint(path, card.arch, device=device, precision=precision)
    return model, image_transform(card.resolution)
