"""Backends behind one :class:`Encoder` interface, so every model runs through the same data, metrics and timing.

Each backend is one module of this package that defines ``fetch(card, download_root, endpoint)``
(the local path of the card's weights, downloaded when absent) and ``load(card, path, device,
precision, compile)`` (an :class:`Encoder`). A model card names its backend in ``adapter``;
modules are imported only when used, so optional dependencies (transformers) stay optional.
``native`` is this package's model; ``altclip`` and ``chineseclip`` load transformers-format folders.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Optional, Union

import torch

from ..registry import ModelCard
from .base import Encoder
from .native import NativeEncoder

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
        raise ValueError(f"unknown adapter {name!r}; known adapters: {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(f".{BACKENDS[name]}", __name__)


def fetch_weights(card: ModelCard, download_root: Optional[Union[str, Path]] = None, endpoint: Optional[str] = None) -> Path:
    """Local path of ``card``'s weights (a file, or a folder for transformers-format models), fetched when absent."""
    return backend(card.adapter).fetch(card, download_root=download_root, endpoint=endpoint)


def load_encoder(
    card: ModelCard,
    checkpoint: Union[str, Path],
    device: Union[str, torch.device] = "auto",
    precision: str = "fp32",
    compile: bool = False,
    backend_name: Optional[str] = None,
) -> Encoder:
    """Load ``checkpoint`` as the model ``card`` describes, behind the Encoder interface.

    ``compile`` runs the vision tower through ``torch.compile`` (native models only).
    ``backend_name`` runs it on another backend than the card's own (``onnx``: exported, run by ONNX Runtime).
    """
    module = backend(backend_name or card.adapter)
    return module.load(card, checkpoint, device=device, precision=precision, compile=compile)


__all__ = ["BACKENDS", "Encoder", "NativeEncoder", "backend", "fetch_weights", "load_encoder"]
