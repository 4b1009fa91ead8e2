"""Incremental runs: data identity records, the pixel cache and the feature cache (docs/caching.md).

:class:`Cache` bundles the three stores under one root (``<QACLIP_CACHE>`` by default) in one
mode: ``use`` (read and write), ``read-only`` (a pull request's job: hits are used, nothing is
written), ``refresh`` (everything recomputed and overwritten) or ``off`` (nothing read or written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qaclip_harness.cache.features import MODES, FeatureStore, Provenance
from qaclip_harness.cache.identity import IdentityRecords
from qaclip_harness.cache.pixels import PixelStore

# the suite's cache flags as environment variables, in the order their modes are named
MODE_VARIABLES = (
    ("QACLIP_NO_CACHE", "off"),
    ("QACLIP_REFRESH_CACHE", "refresh"),
    ("QACLIP_CACHE_READ_ONLY", "read-only"),
)


def mode_from_environment() -> str:
    """The cache mode the variables set (``use`` when none is): for code run outside the suite (the CLI, the ONNX backend)."""
    on = [
        (name, mode)
        for name, mode in MODE_VARIABLES
        if os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
    ]
    if len(on) > 1:
        raise ValueError(f"{on[1][0]} cannot be combined with {on[0][0]}: choose one cache mode")
    return on[0][1] if on else "use"


@dataclass
class Cache:
    """The stores one run uses, in one mode."""

    features: FeatureStore
    pixels: PixelStore
    identity: IdentityRecords

    @property
    def mode(self) -> str:
        """use, read-only, refresh or off."""
        return self.features.mode

    @property
    def enabled(self) -> bool:
        """Whether anything is read or written."""
        return self.mode != "off"

    @classmethod
    def at(cls, root: str | Path, mode: str = "use", verify: bool = False, run: str | None = None) -> Cache:
        """The stores under ``root`` in ``mode``; ``verify`` re-reads every image instead of trusting identity records."""
        root = Path(root)
        features = FeatureStore(root, mode) if run is None else FeatureStore(root, mode, run)
        reads, writes = mode in ("use", "read-only"), mode in ("use", "refresh")
        return cls(
            features,
            PixelStore(root, reads=reads, writes=writes),
            IdentityRecords(root, verify=verify or mode == "refresh", writes=writes),
        )


__all__ = ["MODES", "Cache", "FeatureStore", "IdentityRecords", "PixelStore", "Provenance", "mode_from_environment"]
