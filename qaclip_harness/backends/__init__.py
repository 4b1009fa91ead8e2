"""Backends behind one :class:`Encoder` interface, so every model runs through the same data, metrics and timing.

There is one way in. A backend is named either by an entry point of the group ``qaclip.backends``
(this package registers its own there, in its ``pyproject.toml``: ``native``, ``chineseclip``,
``altclip``, ``onnx``, ``zhclip``; another installed package registers its encoders the same way)
or by a ``module:attribute`` reference written in a model card's ``backend``. What it names is a
loader: a callable ``load(card, checkpoint, device=..., precision=..., compile=...)`` returning an
:class:`Encoder`, or a module that defines one as ``load``. Loaders are imported only when a card
uses them, so optional dependencies (transformers, ONNX Runtime) stay optional.

Every encoder a loader returns is checked against the interface before it is used
(:func:`~qaclip_harness.backends.contract.check_encoder`): a missing method, an output of the wrong
shape or dtype, or NaN is refused with one line naming the backend. ``reference`` holds the
reference implementations used as oracles (not a backend).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

from qaclip_core.registry import ModelCard
from qaclip_harness.backends.base import Encoder
from qaclip_harness.backends.contract import BackendError, check_encoder
from qaclip_harness.backends.native import NativeEncoder

GROUP = "qaclip.backends"


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its loader and where it came from (for messages)."""

    name: str  # the entry-point name, or the module:attribute reference
    origin: str  # "entry point ... of <distribution>" or "module:attribute reference"
    loader: Callable[..., Any]
    module: ModuleType  # the module the loader lives in (built-ins keep helpers there)

    def describe(self) -> str:
        """``'name' (origin)``: how error messages name the backend."""
        return f"{self.name!r} ({self.origin})"

    def load(
        self,
        card: ModelCard,
        checkpoint: str | Path,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        compile: bool = False,
        **options: Any,
    ) -> Any:
        """Call the loader with the backend's own ``options`` (the encoder is checked by :func:`load_encoder`)."""
        return self.loader(card, checkpoint, device=device, precision=precision, compile=compile, **options)


@lru_cache(maxsize=1)
def _entry_points() -> Mapping[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def registered() -> dict[str, str]:
    """Backend name -> ``module:attribute`` of every entry point of the group ``qaclip.backends``."""
    return {name: ep.value for name, ep in sorted(_entry_points().items())}


def refresh() -> None:
    """Read the entry points again (after a package was installed into the running interpreter)."""
    _entry_points.cache_clear()
    _resolved.cache_clear()


def _import_reference(name: str, ref: str, origin: str) -> Any:
    """The object ``ref`` (``module`` or ``module:attribute``) names; a BackendError names the backend ``name``."""
    module_name, _, attribute = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise BackendError(f"backend {name!r} ({origin}): no module named {e.name!r}") from None
        raise
    for part in filter(None, attribute.split(".")):
        if not hasattr(obj, part):
            raise BackendError(f"backend {name!r} ({origin}): {module_name} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


@cache
def _resolved(name: str) -> Backend:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        if (
            not module_name
            or not attribute
            or not all(p.isidentifier() for p in (module_name + "." + attribute).split("."))
        ):
            raise BackendError(f"backend {name!r}: a reference must read module:attribute (e.g. mypkg.encoders:load)")
        origin = "module:attribute reference"
        obj = _import_reference(name, name, origin)
    else:
        ep = _entry_points().get(name)
        if ep is None:
            known = ", ".join(sorted(_entry_points())) or "none (is qaclip-core installed? pip install -e .)"
            raise BackendError(
                f"unknown backend {name!r}: not an entry point of the group {GROUP} (registered: {known}) "
                "and not a module:attribute reference"
            )
        dist = getattr(ep, "dist", None)
        origin = f"entry point {GROUP}:{name} = {ep.value}" + (
            f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
        )
        obj = _import_reference(name, ep.value, origin)
    module = obj if isinstance(obj, ModuleType) else importlib.import_module(getattr(obj, "__module__", "builtins"))
    loader = getattr(obj, "load", None) if isinstance(obj, ModuleType) else obj
    if not callable(loader):
        what = "a module without a load function" if isinstance(obj, ModuleType) else f"a {type(obj).__name__}"
        raise BackendError(
            f"backend {name!r} ({origin}) is {what}; expected a callable "
            "load(card, checkpoint, device=..., precision=..., compile=...) returning an Encoder, or a module defining it"
        )
    return Backend(name, origin, loader, module)


def backend(name: str) -> Backend:
    """The backend ``name``: an entry point of ``qaclip.backends`` or a ``module:attribute`` reference."""
    return _resolved(str(name))


def load_encoder(
    card: ModelCard,
    checkpoint: str | Path,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    compile: bool = False,
    backend_name: str | None = None,
    cache_mode: str | None = None,
) -> Encoder:
    """Load ``checkpoint`` as the model ``card`` describes, behind the Encoder interface (checked before it is returned).

    ``compile`` runs the vision tower through ``torch.compile`` (native models only).
    ``backend_name`` runs it on another backend than the card's own (``onnx``: exported, run by ONNX Runtime).
    ``cache_mode`` is the export cache's mode for the onnx backend (default: from the QACLIP_* cache variables).
    """
    name = backend_name or card.adapter
    chosen = backend(name)
    extra = {"cache_mode": cache_mode} if name == "onnx" else {}
    encoder = chosen.load(card, checkpoint, device=device, precision=precision, compile=compile, **extra)
    check_encoder(encoder, chosen.describe(), card.name)
    return encoder


__all__ = ["GROUP", "Backend", "BackendError", "Encoder", "NativeEncoder", "backend", "load_encoder", "registered"]
