"""Random initial weights for a model built without a checkpoint (tests, benchmarks, the fixture's training).

One rule per kind of tensor, applied to the whole model: convolutions get He-normal weights
(they feed ReLUs), every other weight matrix, embedding and free-standing parameter a normal
of standard deviation :data:`STD`, biases zero, normalisation layers the identity (BatchNorm
statistics 0/1), and the logit scale CLIP's starting temperature of 0.07. A model that will
receive a checkpoint skips all this (``create_model(..., random_init=False)``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

STD = 0.02
INITIAL_TEMPERATURE = 0.07
_NORMS = (nn.BatchNorm2d, nn.LayerNorm)
_OWN_INIT = (nn.Conv2d, nn.Linear, nn.Embedding, *_NORMS)


@torch.no_grad()
def init_weights(model: nn.Module, std: float = STD) -> nn.Module:
    """Fill every parameter (and reset every BatchNorm's statistics) of ``model``; returns it."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, _NORMS):
            module.reset_parameters()
        if isinstance(module, _OWN_INIT):
            if getattr(module, "bias", None) is not None and not isinstance(module, _NORMS):
                nn.init.zeros_(cast(torch.Tensor, module.bias))
            continue
        # parameters registered directly on this module: embeddings, packed projections, the scale
        for name, param in module.named_parameters(recurse=False):
            if name == "logit_scale":
                param.fill_(math.log(1 / INITIAL_TEMPERATURE))
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=std)
    return model
