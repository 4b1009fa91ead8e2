"""Reference (cn_clip) models and checkpoints written the way its training code writes them."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Tuple

import torch


def reference_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised cn_clip model of ``VISION@TEXT`` (fp16 storage as cn_clip builds it)."""
    from cn_clip.clip.utils import create_model

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its config
        return create_model(arch).eval()


def save_reference_checkpoint(model: torch.nn.Module, path: Path, ddp_prefix: bool = True) -> Path:
    """Write ``model`` as cn_clip's training loop saves checkpoints (DDP ``module.`` keys)."""
    prefix = "module." if ddp_prefix else ""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "step": 1234, "name": "parity", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def reference_with_checkpoint(arch: str, path: Path, seed: int = 0) -> Tuple[torch.nn.Module, Path]:
    """A reference model in fp32 (as its eval scripts run it) and its checkpoint on disk."""
    model = reference_model(arch, seed)
    save_reference_checkpoint(model, path)
    return model.float(), path
