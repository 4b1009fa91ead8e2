"""Shared fixtures for the unit and parity tests."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import huggingface_hub.constants  # noqa: F401
import pytest
from PIL import Image, ImageDraw

from .data import EXAMPLE_IMAGE

# huggingface_hub reads HF_HUB_OFFLINE once, when first imported: imported here, with the session's
# own environment, so that a test which sets the variable for itself (monkeypatch.setenv) cannot
# leave every later download of the session offline.

REPO = Path(__file__).resolve().parents[1]
REFERENCE_INSTALL = "pip install --no-deps cn_clip==1.6.0 six"


def require_reference(allow_module_level: bool = False) -> None:
    """Skip, naming it, unless cn_clip (the reference implementation, the tests' oracle) is installed.

    Under QACLIP_REQUIRE_REFERENCE=1, which .ci/run sets after tox has installed it, its absence fails instead:
    CI must not pass by skipping every comparison with the reference. Tests that import it inside call this (or
    carry the ``reference`` marker, which does the same before they run); modules that import it at the top call
    it first, with ``allow_module_level=True``.
    """
    if importlib.util.find_spec("cn_clip") is not None:
        return
    reason = f"needs cn_clip, the reference implementation (the test oracle): {REFERENCE_INSTALL}"
    if os.environ.get("QACLIP_REQUIRE_REFERENCE", "") not in ("", "0"):
        pytest.fail(f"QACLIP_REQUIRE_REFERENCE is set but this test {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``reference`` skip (or, under QACLIP_REQUIRE_REFERENCE=1, fail) without cn_clip."""
    if item.get_closest_marker("reference") is not None:
        require_reference()


CAPTIONS = [
    "杰尼龟",
    "妙蛙种子",
    "小火龙",
    "皮卡丘",
    "一只橘猫趴在窗台上晒太阳",
    "两个小孩在海边堆沙堡",
    "一位穿着红色外套的女士站在雪地里",
    "桌子上放着一碗热气腾腾的牛肉面",
    "夜晚的城市街道，霓虹灯闪烁",
    "一辆白色的SUV停在停车场里",
    "“你好”，他说。",
    "Nike 男款跑步鞋 2023新款 透气网面",
    "iPhone 15 Pro Max 手机壳，全包防摔",
    "一群人在公园里打太极拳，背景是高楼大厦，天空中飘着几朵白云，远处还有一座古老的宝塔和一条蜿蜒的小河",
    "ＡＢＣ全角字母和１２３全角数字",
    "café 的拿铁咖啡 ☕",
    "",
]


def _draw(size, colour, shape: str) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 240))
    d = ImageDraw.Draw(img)
    w, h = size
    box = (w // 6, h // 6, 5 * w // 6, 5 * h // 6)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "rect":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(w // 2, h // 8), (w // 8, 7 * h // 8), (7 * w // 8, 7 * h // 8)], fill=colour)
    for x in range(0, w, 7):
        d.line([(x, 0), (w - x, h)], fill=(x % 255, 90, 160), width=1)
    return img


def real_images() -> list[Image.Image]:
    """The seed's example photo plus generated images of varied modes and sizes."""
    images = [Image.open(EXAMPLE_IMAGE)]
    images.append(_draw((320, 240), (220, 30, 30), "circle"))
    images.append(_draw((97, 411), (30, 30, 220), "tri"))
    images.append(_draw((224, 224), (30, 200, 60), "rect").convert("L"))
    images.append(_draw((600, 50), (250, 200, 0), "circle").convert("P", palette=Image.ADAPTIVE))
    rgba = _draw((150, 150), (120, 20, 200), "tri").convert("RGBA")
    rgba.putalpha(128)
    images.append(rgba)
    buf = io.BytesIO()
    _draw((333, 222), (10, 120, 120), "rect").save(buf, format="JPEG", quality=85)
    images.append(Image.open(io.BytesIO(buf.getvalue())))
    return images
