"""Throughput of encode_image / encode_text for every registry architecture, ours beside cn_clip.

Random weights of the real architecture cost what the real ones cost, so these cases run on
every machine. Each reference case sits in the same benchmark group as ours, so the saved JSON
and the terminal table put them side by side (``tools/throughput_report.py`` prints the ratios).
"""

from __future__ import annotations

import time

import pytest
import torch

from qaclip_core.tokenizer import tokenize

from .throughput_support import (
    architectures,
    batch_sizes,
    device_name,
    device_precisions,
    is_large,
    mean_seconds,
    models,
    nominal_image_gflops,
    realistic_captions,
    rounds_for,
    timed_call,
)

IMPLS = ["qaclip_core", "cn_clip"]
COMPILED = "qaclip_core+compile"
ONNX = "onnxruntime"  # our model exported to ONNX (fp32/fp16), run by ONNX Runtime on the device's provider


def _impls(tower: str, device: str, arch_id: str) -> list:
    # torch.compile of the vision tower: timed on GPUs; on a CPU only for the fixture, since
    # compiling a real tower there takes minutes and gains little (ViT-B/16: about 5%)
    compiled = tower == "image" and (device == "cuda" or arch_id == "fixture")
    return ([*IMPLS, COMPILED] if compiled else IMPLS) + [ONNX]


def _params(tower: str) -> list:
    params = []
    for arch_id, arch in architectures():
        for device, precision in device_precisions():
            for batch in batch_sizes(device, tower):
                for impl in _impls(tower, device, arch_id):
                    marks = [pytest.mark.large_model] if is_large(arch) else []
                    if impl == ONNX and arch_id != "fixture":
                        marks.append(pytest.mark.peer_backend)
                    params.append(
                        pytest.param(
                            arch,
                            device,
                            precision,
                            batch,
                            impl,
                            marks=marks,
                            id=f"{arch_id}-{precision}-b{batch}-{impl}",
                        )
                    )
    return params


def _run(benchmark, fn, device: str, items: int, info: dict) -> None:
    fn = timed_call(fn, device)
    with torch.inference_mode():
        fn()  # warm-up: allocator, kernels, caches
        start = time.perf_counter()
        fn()
        per_call = time.perf_counter() - start
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        benchmark.pedantic(fn, rounds=rounds_for(per_call), iterations=1, warmup_rounds=0)
    mean = mean_seconds(benchmark)
    info.update(device_name=device_name(device), torch=torch.__version__)
    if mean is not None:
        info["items_per_s"] = round(items / mean, 2)
    if device == "cuda":
        info["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    benchmark.extra_info.update(info)


def _onnx(arch, device, precision):
    from qaclip_core.errors import QAClipError

    from .throughput_support import onnx_encoder

    try:
        return onnx_encoder(arch, device, precision)
    except (ImportError, QAClipError) as e:
        pytest.skip(str(e).splitlines()[0])


def _pick(arch, device, precision, impl):
    if impl == ONNX:
        return _onnx(arch, device, precision)
    ours, ref = models(arch, device, precision)
    model = ref if impl == "cn_clip" else ours
    if model is None:
        pytest.skip("cn_clip is not installed")
    return model


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch,impl", _params("image"))
def test_encode_image(benchmark, arch, device, precision, batch, impl):
    """Images per second of encode_image."""
    model = _pick(arch, device, precision, impl)
    gen = torch.Generator().manual_seed(0)
    if impl == ONNX:  # ONNX Runtime takes fp32 host arrays (the graph casts); its outputs come back to the host
        res = model.image_size
        images = torch.randn(batch, 3, res, res, generator=gen)
    else:
        res = model.visual.input_resolution
        images = torch.randn(batch, 3, res, res, generator=gen).to(device, model.dtype)
    benchmark.group = f"encode_image {arch} {precision} b{batch} {device}"
    gflops = nominal_image_gflops(arch)
    # compiled on the first (warm-up) call, which is not timed
    encode = torch.compile(model.visual) if impl == COMPILED else model.encode_image
    _run(
        benchmark,
        lambda: encode(images),
        device,
        batch,
        {
            "tower": "image",
            "arch": arch,
            "batch": batch,
            "precision": precision,
            "impl": impl,
            "device": device,
            "nominal_gflops_per_item": round(gflops, 2),
        },
    )
    if "items_per_s" in benchmark.extra_info:
        benchmark.extra_info["achieved_tflops"] = round(benchmark.extra_info["items_per_s"] * gflops / 1e3, 2)


@pytest.mark.throughput
@pytest.mark.parametrize("arch,device,precision,batch,impl", _params("text"))
def test_encode_text(benchmark, arch, device, precision, batch, impl):
    """Captions per second of encode_text on realistic Chinese captions (context length 52)."""
    model = _pick(arch, device, precision, impl)
    tokens = tokenize(realistic_captions(batch))
    tokens = tokens if impl == ONNX else tokens.to(device)
    benchmark.group = f"encode_text {arch} {precision} b{batch} {device}"
    _run(
        benchmark,
        lambda: model.encode_text(tokens),
        device,
        batch,
        {
            "tower": "text",
            "arch": arch,
            "batch": batch,
            "precision": precision,
            "impl": impl,
            "device": device,
            "mean_tokens": round(float((tokens != 0).sum(1).float().mean()), 1),
        },
    )


@pytest.mark.throughput
@pytest.mark.parametrize("device,precision", device_precisions(), ids=[f"{d}-{p}" for d, p in device_precisions()])
def test_matmul_peak(benchmark, device, precision):
    """The dense matrix-product rate of this device and precision: the measured FLOP bound of the run."""
    from qaclip_core.checkpoint import resolve_dtype

    n = 8192 if device == "cuda" else 2048
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, resolve_dtype(precision)) for _ in range(2))
    benchmark.group = f"matmul peak {precision} {device}"
    _run(
        benchmark, lambda: a @ b, device, 1, {"impl": "torch matmul", "n": n, "precision": precision, "device": device}
    )
    if mean_seconds(benchmark) is not None:
        benchmark.extra_info["achieved_tflops"] = round(2 * n**3 / mean_seconds(benchmark) / 1e12, 2)
