"""Shared pieces of the throughput cases: realistic captions, model pairs, timing helpers."""

from __future__ import annotations

import contextlib
import io
import platform
import random
from functools import cache, lru_cache
from typing import Callable

import torch

from qaclip_core.registry import all_cards

_SUBJECTS = [
    "一只橘猫",
    "两个小孩",
    "一位穿红色外套的女士",
    "一辆白色的汽车",
    "一群游客",
    "一只金毛犬",
    "一位老人",
    "三个穿校服的学生",
    "一盘热气腾腾的饺子",
    "一座古老的石桥",
    "一架飞机",
    "一双运动鞋",
    "一件羊毛大衣",
]
_ACTIONS = ["坐在", "站在", "躺在", "走过", "停在", "摆放在", "飞过", "出现在"]
_PLACES = ["窗台上", "海边的沙滩上", "雪地里", "城市街道上", "公园的草地上", "木桌上", "山顶", "商场门口", "河边"]
_DETAILS = [
    "",
    "，阳光明媚",
    "，背景是高楼大厦",
    "，天空中飘着几朵白云",
    "，周围有很多人在拍照",
    "，画面温馨",
    "，远处还有一座宝塔和一条蜿蜒的小河",
    "，夜晚霓虹灯闪烁",
    "，2023新款 包邮 正品保证",
]


def realistic_captions(n: int, seed: int = 0) -> list[str]:
    """Chinese captions of varied length (about 6 to 40 characters), deterministic."""
    rng = random.Random(seed)
    return [
        rng.choice(_SUBJECTS)
        + rng.choice(_ACTIONS)
        + rng.choice(_PLACES)
        + rng.choice(_DETAILS)
        + rng.choice(["", "。"])
        for _ in range(n)
    ]


def architectures() -> list[tuple[str, str]]:
    """(id, VISION@TEXT) for every architecture a registry card uses, native models only."""
    seen: dict[str, str] = {}
    for card in all_cards():
        if card.adapter != "native" or card.arch in seen.values():
            continue
        short = "fixture" if card.test_only else card.vision.lower()
        seen[short] = card.arch
    return sorted(seen.items())


def is_large(arch: str) -> bool:
    """Whether the vision tower of ``VISION@TEXT`` is a large ViT (width 1024 or more: ViT-L/14, ViT-H/14).

    Their CPU throughput cases take minutes each, so off CUDA they run only on request
    (``--cpu-large-throughput``).
    """
    from qaclip_core.model.config import vision_config

    cfg = vision_config(arch.split("@")[0])
    return cfg.kind == "vit" and cfg.width >= 1024


def device_precisions() -> list[tuple[str, str]]:
    """(device, precision) pairs this machine supports."""
    pairs = [("cpu", "fp32")]
    if torch.cuda.is_available():
        pairs = [("cuda", p) for p in ("fp32", "fp16", "bf16")]
    return pairs


def batch_sizes(device: str, tower: str) -> list[int]:
    """Small and large batches, per device and tower."""
    if device == "cuda":
        return [1, 64, 256] if tower == "image" else [1, 1024]
    return [1, 16] if tower == "image" else [1, 64]


@lru_cache(maxsize=1)
def _models(arch: str, device: str, precision: str):
    """(ours, reference or None) with the same random weights."""
    from qaclip_core.checkpoint import resolve_dtype
    from qaclip_core.model.clip import create_model

    torch.manual_seed(0)
    ours = create_model(arch)
    ref = None
    try:
        from cn_clip.clip.model import CLIP as RefCLIP
        from cn_clip.clip.utils import create_model as ref_create

        from qaclip_core.model.config import reference_kwargs

        with contextlib.redirect_stdout(io.StringIO()):
            # the fixture has no config in cn_clip: its CLIP class is built from our config
            ref = ref_create(arch) if arch.split("@")[0] in _ref_visions() else RefCLIP(**reference_kwargs(arch))
    except ImportError:
        ref = None
    if ref is not None:
        ref = ref.float().eval()
        ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    dtype = resolve_dtype(precision)
    ours = ours.to(device=device, dtype=dtype).eval()
    if ref is not None:
        ref = ref.to(device=device, dtype=dtype).eval()
    return ours, ref


def _ref_visions() -> set:
    from pathlib import Path

    import cn_clip

    return {p.stem for p in (Path(cn_clip.__file__).parent / "clip" / "model_configs").glob("*.json")}


def models(arch: str, device: str, precision: str):
    """Cached model pair of ``arch``; the previous pair is released first."""
    return _models(arch, device, precision)


_EXPORT_DIRS: list[str] = []


@lru_cache(maxsize=1)
def _onnx_encoder(arch: str, device: str, precision: str):
    import atexit
    import shutil
    import tempfile

    from qaclip_harness.backends.onnx import OnnxEncoder, verify_export
    from qaclip_harness.export.onnx import export_model

    ours, _ = models(arch, device, precision)
    if not _EXPORT_DIRS:

        def remove_exports() -> None:
            for d in _EXPORT_DIRS:
                shutil.rmtree(d, ignore_errors=True)

        atexit.register(remove_exports)
    directory = tempfile.mkdtemp(prefix="qaclip-onnx-bench-")
    _EXPORT_DIRS.append(directory)
    export_model(ours, directory, name=arch, verify=verify_export)
    return OnnxEncoder(directory, device=device)


def onnx_encoder(arch: str, device: str, precision: str):
    """ONNX Runtime encoder of ``models(...)``'s own model (the same random weights), exported once per architecture.

    Raises ImportError without the ``onnx`` extra, QAClipError for a precision it does not export.
    """
    from qaclip_harness.export.deps import require

    require()
    return _onnx_encoder(arch, device, precision)


@cache
def nominal_image_gflops(arch: str) -> float:
    """GFLOPs of one image through the vision tower computing every token (as the reference does).

    Counted by torch's FlopCounterMode on the meta device (shapes only, no work): ViT-B/16 gives
    35.1 and ViT-L/14 162.0, the figures of the FLOP bound in DESIGN.md section 5. Our fast
    paths skip part of the last layer, so the bound they are held to is the nominal one.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from qaclip_core.model.clip import create_model

    with torch.device("meta"):
        model = create_model(arch).eval().use_fast_paths(False)
        images = torch.zeros(1, 3, model.image_size, model.image_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode_image(images)
    return counter.get_total_flops() / 1e9


def device_name(device: str) -> str:
    """Human-readable device name for benchmark records."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def timed_call(fn: Callable[[], torch.Tensor], device: str) -> Callable[[], torch.Tensor]:
    """Wrap ``fn`` so that a timing includes the GPU work (synchronise after the call)."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def mean_seconds(benchmark) -> float | None:
    """Mean seconds per round, or None under ``--benchmark-disable`` (the case then runs once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.mean


def rounds_for(seconds_per_call: float, budget: float = 8.0) -> int:
    """Enough rounds for a stable mean within a time budget (at least 2)."""
    return max(2, min(20, int(budget / max(seconds_per_call, 1e-6))))
