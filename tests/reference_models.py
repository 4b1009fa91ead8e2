"""Reference (cn_clip) models and checkpoints written the way its training code writes them."""
from __future__ import annotations

import contextlib
import io
import math
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


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float tensor of ``model`` (parameters and buffers, BatchNorm statistics too) random values.

    Random initialisation leaves norms at 1/0, biases and some weights at 0 and BatchNorm at
    mean 0 / variance 1, which hides whole classes of bugs (a dropped bias, a swapped norm).
    Matrices keep their scale (std of the init, at least 0.02); vectors get small noise around
    their role's value; running variances stay positive.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g).to(t.dtype)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif leaf == "running_mean":
                t.copy_(0.1 * noise)
            elif t.dim() >= 2:
                scale = max(float(t.float().std()), 0.02)
                t.copy_(noise * scale)
            elif leaf == "weight":  # LayerNorm / BatchNorm scales
                t.copy_(1.0 + 0.1 * noise)
            elif leaf == "logit_scale":
                t.fill_(math.log(1 / 0.07) + 0.1 * float(noise))
            else:  # biases, class embedding
                t.copy_(0.05 * noise)
    return model
