"""Random weights that hide nothing: every float tensor of a model drawn anew.

Default initialisations zero biases, set norms to 1/0 and (in cn_clip) zero some projections,
so a conversion that drops or swaps such a tensor would go unnoticed. Here every floating
tensor (parameters and buffers, BatchNorm running statistics included) is drawn: matrices with
std 1/sqrt(fan-in), so that activations keep their scale through the layers; vectors around
1 (norm weights, running variances) or 0 (biases, means, embeddings' rows).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Draw every floating-point tensor of ``model`` in place; returns the model."""
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if t.dim() >= 2:
            fan_in = t[0].numel()
            value = noise / fan_in**0.5
        elif name.endswith("running_var"):
            value = 1.0 + 0.2 * noise.abs()
        elif t.dim() == 1 and name.endswith("weight"):  # LayerNorm / BatchNorm scales
            value = 1.0 + 0.2 * noise
        elif t.dim() == 0:
            value = 2.0 + 0.5 * noise  # logit scale
        else:
            value = 0.2 * noise
        t.copy_(value.to(t.dtype))
    return model
