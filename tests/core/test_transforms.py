"""Link 3: preprocessed tensors equal to the reference transform's, bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from qaclip_core import image_transform
from tests.conftest import _draw, real_images, require_reference

require_reference(allow_module_level=True)
from cn_clip.clip import image_transform as ref_transform  # noqa: E402 -- after require_reference, which names the oracle when it is missing


def _roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def _cases():
    base = _draw((257, 181), (200, 40, 90), "circle")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    gray16 = Image.frombytes("I;16", (64, 48), (np.arange(64 * 48, dtype="<u2") * 20).tobytes())
    return {
        "jpeg": _roundtrip(base, "JPEG", quality=90),
        "png": _roundtrip(base, "PNG"),
        "rgba-png": _roundtrip(rgba, "PNG"),
        "palette": _roundtrip(base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "palette-transparency": _roundtrip(base.convert("P", palette=Image.ADAPTIVE), "GIF", transparency=0),
        "grayscale": _roundtrip(base.convert("L"), "JPEG"),
        "la": base.convert("LA"),
        "1bit": base.convert("1"),
        "16bit": _roundtrip(gray16, "PNG"),
        "int32": base.convert("I"),
        "float": base.convert("F"),
        "cmyk-jpeg": _roundtrip(base.convert("CMYK"), "JPEG"),
        "tiny": Image.new("RGB", (1, 1), (12, 34, 56)),
        "wide": _draw((2000, 7), (0, 0, 255), "rect"),
        "tall": _draw((5, 900), (0, 255, 0), "rect"),
        "webp": _roundtrip(base, "WEBP"),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("size", [224, 336, 64])
def test_equal_to_reference(name, size):
    img = _cases()[name]
    ours = image_transform(size)(img.copy())
    ref = ref_transform(size)(img.copy())
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)


def test_real_images_equal_to_reference():
    for img in real_images():
        assert torch.equal(image_transform(224)(img), ref_transform(224)(img))


def test_into_equals_call_for_every_pixel_value():
    """The slot writer is elementwise in (value, channel): all 256 x 3 inputs decide it."""
    values = np.arange(256, dtype=np.uint8)
    img = Image.fromarray(np.stack([np.tile(values, (256, 1))] * 3, axis=-1).copy())  # 256x256, every value per channel
    for size in (256, 224):  # 256: no resampling, every value reaches the tensor stage
        transform = image_transform(size)
        out = torch.full((2, 3, size, size), float("nan"))
        transform.into(img, out[1])
        assert torch.equal(out[1], transform(img))
        assert torch.isnan(out[0]).all()  # only its own slot is written


@pytest.mark.parametrize("name", sorted(_cases()))
def test_into_equals_reference(name):
    img = _cases()[name]
    out = torch.empty(3, 224, 224)
    image_transform(224).into(img.copy(), out)
    assert torch.equal(out, ref_transform(224)(img.copy()))


def test_transform_is_a_compose():
    """Users of the seed API may inspect ``preprocess.transforms``."""
    from torchvision.transforms import Compose

    transform = image_transform(336)
    assert isinstance(transform, Compose) and len(transform.transforms) == 4
    assert transform.output_shape == (3, 336, 336)
