"""Backends behind one :class:`Encoder` interface, so every model runs through the same data, metrics and timing.

Each backend is one module of this package that defines ``load(card, path, device, precision,
compile)`` (an :class:`Encoder` over weights already on disk: :mod:`qaclip_harness.fetch.weights`
puts them there). A model card names its backend in ``adapter``; modules are imported only when
used, so optional dependencies (transformers, ONNX Runtime) stay optional. ``native`` is the
qaclip_core model; ``altclip`` and ``chineseclip`` load transformers-format folders; ``onnx``
exports a qaclip_core checkpoint and runs it with ONNX Runtime; ``reference`` holds the
reference implementations used as oracles (not a card's backend).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch

from qaclip_core.registry import ModelCard
from qaclip_harness.backends.base import Encoder
from qaclip_harness.backends.native import NativeEncoder

# card.adapter -> module of this package
BACKENDS = {
    "native": "native",
    "altclip": "altclip",
    "chineseclip": "chineseclip",
    "onnx": "onnx",  # not a card's adapter: a backend chosen per run (suite --backend onnx)
}


def backend(name: str) -> ModuleType:
    """The module implementing backend ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(f".{BACKENDS[name]}", __name__)


def load_encoder(
    card: ModelCard,
    checkpoint: str | Path,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    compile: bool = False,
    backend_name: str | None = None,
    cache_mode: str | None = None,
) -> Encoder:
    """Load ``checkpoint`` as the model ``card`` describes, behind the Encoder interface.

    ``compile`` runs the vision tower through ``torch.compile`` (native models only).
    ``backend_name`` runs it on another backend than the card's own (``onnx``: exported, run by ONNX Runtime).
    ``cache_mode`` is the export cache's mode for the onnx backend (default: from the QACLIP_* cache variables).
    """
    name = backend_name or card.adapter
    extra = {"cache_mode": cache_mode} if name == "onnx" else {}
    return backend(name).load(card, checkpoint, device=device, precision=precision, compile=compile, **extra)


__all__ = ["BACKENDS", "Encoder", "NativeEncoder", "backend", "load_encoder"]
