"""The one feature normalisation every comparison uses: rows L2-normalised in fp32."""

from __future__ import annotations

import torch


def normalise(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of ``x`` in fp32, on its own device (call it on ``x.cpu()`` to normalise on the CPU)."""
    x = x.detach().float()
    return x / x.norm(dim=-1, keepdim=True)
