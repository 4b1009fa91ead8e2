"""The Encoder interface checked on a live encoder: what a backend returns is probed once before it is used.

Two generated images and two captions go through ``preprocess``, ``tokenize``, ``encode_image``
and ``encode_text``; an encoder that lacks a member, returns something of the wrong type, rank,
batch size or dtype, image and text features of different widths, or non-finite values is refused
with one line naming the backend, the model and what was expected. A backend written against the
documented interface passes untouched; nothing here converts or repairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from qaclip_core.errors import QAClipError

ATTRIBUTES = ("name", "device", "dtype")
METHODS = ("preprocess", "tokenize", "encode_image", "encode_text")
PROBE_TEXTS = ("一只橘猫趴在窗台上", "两个小孩在海边堆沙堡，阳光明媚")


class BackendError(QAClipError, ValueError):
    """A backend that cannot be found or loaded, or whose encoder does not satisfy the Encoder interface."""


def probe_images() -> list[Image.Image]:
    """Two small deterministic images of different sizes and modes (RGB, grey)."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 256, (30, 70), dtype=np.uint8), "L"),
    ]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def _tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise _Refused(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value


def _features(value: Any, what: str, n: int) -> torch.Tensor:
    t = _tensor(value, what)
    if t.dim() != 2 or t.shape[0] != n or t.shape[1] < 1:
        raise _Refused(f"{what} returned shape {_shape(t)} for {n} inputs, expected [{n}, D]")
    if not t.is_floating_point():
        raise _Refused(f"{what} returned dtype {t.dtype}, expected a floating-point tensor")
    if not bool(torch.isfinite(t).all()):
        raise _Refused(f"{what} returned NaN or infinite values")
    return t


class _Refused(Exception):
    """One broken promise of the interface (turned into a BackendError naming the backend)."""


def _call(encoder: Any, method: str, *args: Any) -> Any:
    try:
        return getattr(encoder, method)(*args)
    except QAClipError:
        raise  # the package's own errors (a missing dependency, a bad file) already say what is wrong
    except Exception as e:  # whatever a foreign encoder raises is reported as its fault, in one line
        raise _Refused(f"{method} raised {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}") from e


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    # a torch.compile'd tower would compile once for the probe's batch and again for the real one
    stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    with stance("force_eager") if stance is not None else contextlib.nullcontext():
        yield


def _probe(encoder: Any) -> None:
    missing = [a for a in ATTRIBUTES if not hasattr(encoder, a)]
    missing += [m for m in METHODS if not callable(getattr(encoder, m, None))]
    if missing:
        raise _Refused(f"the encoder ({type(encoder).__name__}) has no {', '.join(missing)}")
    if not isinstance(encoder.dtype, torch.dtype):
        raise _Refused(f"its dtype is {encoder.dtype!r}, expected a torch.dtype")
    pixels: list[torch.Tensor] = []
    for i, picture in enumerate(probe_images()):
        px = _tensor(_call(encoder, "preprocess", picture), "preprocess")
        if px.dim() != 3 or px.shape[0] != 3 or not px.is_floating_point():
            raise _Refused(
                f"preprocess returned shape {_shape(px)} {px.dtype} for image {i}, expected a float tensor [3, H, W]"
            )
        if pixels and px.shape != pixels[0].shape:
            raise _Refused(
                f"preprocess returned shapes {_shape(pixels[0])} and {_shape(px)} for two images of other sizes"
            )
        pixels.append(px)
    tokens = _tensor(_call(encoder, "tokenize", list(PROBE_TEXTS)), "tokenize")
    if tokens.dim() != 2 or tokens.shape[0] != len(PROBE_TEXTS) or tokens.is_floating_point():
        raise _Refused(
            f"tokenize returned shape {_shape(tokens)} {tokens.dtype} for {len(PROBE_TEXTS)} captions, "
            f"expected integer ids [{len(PROBE_TEXTS)}, L]"
        )
    with torch.inference_mode(), _eager():
        image = _features(_call(encoder, "encode_image", torch.stack(pixels)), "encode_image", len(pixels))
        text = _features(_call(encoder, "encode_text", tokens), "encode_text", len(PROBE_TEXTS))
    if image.shape[1] != text.shape[1]:
        raise _Refused(
            f"encode_image gives {image.shape[1]} features and encode_text {text.shape[1]}: "
            "they must share one embedding space"
        )


def check_encoder(encoder: Any, backend: str, model: str) -> None:
    """Refuse ``encoder`` (a :class:`BackendError` naming ``backend`` and ``model``) unless it satisfies the interface."""
    try:
        _probe(encoder)
    except _Refused as e:
        raise BackendError(
            f"backend {backend} for model {model!r} does not satisfy the Encoder interface: {e}"
        ) from None
