"""ONNX Runtime: the execution provider for a device, the opsets it runs, sessions with clear errors."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import torch

from qaclip_harness.errors import ExportError
from qaclip_harness.export.deps import require

PathLike = Union[str, "os.PathLike[str]"]
GPU_HINT = "pip install onnxruntime-gpu (in place of onnxruntime)"


@lru_cache(maxsize=1)
def runtime_max_opset() -> int:
    """The highest ai.onnx opset the installed onnxruntime accepts, found by loading a one-node model per opset."""
    onnx, ort = require("onnx", "onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the rejections below are expected; keep them off stderr
    for opset in range(onnx.defs.onnx_opset_version() + 2, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 -- onnxruntime raises its own Fail/InvalidGraph types for an opset it does not know
            continue
        return opset
    raise ExportError(
        f"onnxruntime {ort.__version__} accepted no ai.onnx opset between 7 and {onnx.defs.onnx_opset_version()}"
    )


def resolve_providers(device: str | torch.device | None = "auto") -> tuple[torch.device, list[Any]]:
    """(device, execution providers) for ``device``: CPU EP for ``cpu``, CUDA EP (with its device id) for ``cuda[:N]``.

    ``auto`` picks CUDA when both torch and onnxruntime see it, else the CPU.
    """
    (ort,) = require("onnxruntime")
    have = ort.get_available_providers()
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() and "CUDAExecutionProvider" in have else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, ["CPUExecutionProvider"]
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise ExportError(
                f"device {dev}: the installed onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                f"(it offers {', '.join(have)}); {GPU_HINT}"
            )
        index = dev.index if dev.index is not None else 0
        return torch.device("cuda", index), [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ExportError(f"device {dev}: the ONNX backend runs on cpu or cuda[:N]")


def model_opset(path: PathLike) -> int:
    """The ai.onnx opset an ONNX file imports (its weights are not read)."""
    (onnx,) = require("onnx")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: a damaged file
        raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from e
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportError(f"{path}: imports no ai.onnx opset")
    return int(versions[0])


def check_runtime_opset(path: PathLike) -> int:
    """The model's opset; ExportError when the installed onnxruntime does not run it."""
    (ort,) = require("onnxruntime")
    opset = model_opset(path)
    top = runtime_max_opset()
    if opset > top:
        raise ExportError(
            f"{path}: uses ai.onnx opset {opset}, but the installed onnxruntime {ort.__version__} runs opsets up to {top}; "
            f"upgrade onnxruntime or export again with --opset {top} or lower"
        )
    return opset


def session(path: PathLike, providers: list[Any], threads: int | None = None) -> Any:
    """An InferenceSession on ``path``; ExportError naming the file when onnxruntime refuses it."""
    (ort,) = require("onnxruntime")
    check_runtime_opset(path)
    options = ort.SessionOptions()
    # the same thread count as torch, so that the two backends are compared on the same cores
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    # idle workers sleep instead of spinning: they share the cores with image-decoding threads
    # and with torch (the throughput cases time both backends in one process)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(Path(path)), options, providers=providers)
    except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, InvalidProtobuf, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: onnxruntime {ort.__version__} cannot load it: {first[:400]}") from e
