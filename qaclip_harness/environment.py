"""The environment a run's numbers came from: package and library versions, device, numeric settings.

Two runs whose numbers differ are first compared on this (``python -m qaclip_core
compare-reports``): a torch upgrade, TF32 switched on or another GPU explains many differences
before any code does.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(root: Path = PACKAGE_ROOT) -> dict[str, object] | None:
    """The checkout's commit and whether it has uncommitted changes; None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def device_name(device: str) -> str:
    """A human name of ``device`` (the GPU's name on CUDA)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        return torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())
    return f"CPU ({platform.processor() or platform.machine()})"


def numeric_settings() -> dict[str, object]:
    """TF32, determinism and thread settings: what changes the low bits of every feature."""
    import torch

    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "torch_threads": torch.get_num_threads(),
    }


def environment(device: str = "cpu") -> dict[str, object]:
    """Everything about this run that is not the data or the checkpoint."""
    import torch

    from qaclip_core import __version__

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "qaclip_core": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": cudnn if torch.cuda.is_available() else None,
        "device": str(device),
        "device_name": device_name(device),
        "numerics": numeric_settings(),
        "cn_clip": _version("cn_clip"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
    }
