"""The export cache: one folder per export key, used only when its files, its record and its canary check out.

The key (:func:`export_fields`) holds the checkpoint's sha256, the opset, the precision, the
project's source (the model code and the exporter are in it: :func:`qaclip_harness.cache.keys.source_digest`)
and the versions of Python, torch, onnx, onnxscript, onnxruntime and NumPy. The folder
``<cache>/onnx/<sha>-opset<N>-<precision>-<key>`` holds the export and its ``manifest.json``;
the record ``<folder>.json`` beside it holds the key's fields and, per device kind, the sha256 of
the export's canary (the probe set's features through ONNX Runtime, computed by the backend).

A folder is used only when its record names this key, its manifest names this checkpoint, opset
and precision, and every file the manifest lists has its size and sha256 (hashed in full on every
use: a file rewritten with its size and time restored is caught). Anything else is one warning,
then the export is made again. The cache modes of the suite apply: ``off`` exports into a
temporary folder of this process; ``read-only`` uses a valid export and otherwise exports into a
temporary folder, writing nothing into the cache; ``refresh`` exports anew into the cache. A file
lock serialises exporters of one key (xdist workers).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from qaclip_harness.cache import mode_from_environment
from qaclip_harness.cache.keys import library_versions, make_key, source_digest
from qaclip_harness.errors import ExportError
from qaclip_harness.export.manifest import Verifier, read_manifest
from qaclip_harness.files import OutputError, atomic_write_json

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
EXPORT_LIBRARIES = ("python", "qaclip_core", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy")


def export_cache_root() -> Path:
    """``<package cache>/onnx`` (``$QACLIP_CACHE`` or ``~/.cache/qaclip``)."""
    from qaclip_core.pretrained import cache_root

    return cache_root() / "onnx"


def export_fields(checkpoint_sha256: str, opset: int, precision: str) -> dict[str, object]:
    """What names an export: the checkpoint, opset and precision, the project's source and the exporting libraries."""
    versions = library_versions()
    return {
        "what": "onnx export",
        "checkpoint": checkpoint_sha256.lower(),
        "opset": int(opset),
        "precision": precision,
        "source": source_digest(),
        "versions": {k: versions.get(k) for k in EXPORT_LIBRARIES},
    }


def cache_key(checkpoint_sha256: str, opset: int, precision: str) -> str:
    """The folder name of one export in the cache."""
    key = make_key(export_fields(checkpoint_sha256, opset, precision))
    return f"{checkpoint_sha256[:24]}-opset{opset}-{precision}-{key[:16]}"


def stale_reason(directory: Path, checkpoint_sha256: str, opset: int, precision: str) -> str | None:
    """Why the cached export in ``directory`` cannot be used for this key, or None when it can (its files hashed in full)."""
    fields = export_fields(checkpoint_sha256, opset, precision)
    record = _read_record(directory)
    if record is None:
        return f"{_record_path(directory)}: missing or not readable (an interrupted or foreign export)"
    if record.get("key") != make_key(fields) or make_key(record.get("fields") or {}) != record.get("key"):
        return f"{_record_path(directory)}: made for another key (another checkpoint, source or library version)"
    try:
        manifest = read_manifest(directory)
        manifest.verify_files(directory)
    except ExportError as e:
        return str(e)
    wanted = {"checkpoint_sha256": checkpoint_sha256.lower(), "opset": opset, "precision": precision}
    for key, value in wanted.items():
        if getattr(manifest, key) != value:
            return f"{directory}: manifest has {key} {getattr(manifest, key)!r}, {value!r} wanted"
    return None


def _record_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".json")


def _read_record(directory: Path) -> dict | None:
    try:
        doc = json.loads(_record_path(directory).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class CachedExport:
    """An export to open: its folder, the checkpoint's sha256, and how it relates to the cache."""

    directory: Path
    sha256: str
    reused: bool  # found in the cache (its canary is checked against the record)
    writes: bool  # the cache may be written (its record gains canaries)
    canaries: dict[str, str] = field(default_factory=dict)  # device kind -> sha256 of the canary

    def canary(self, device: str) -> str | None:
        """The stored canary digest for ``device``, if any."""
        return self.canaries.get(device)

    def record_canary(self, device: str, digest: str) -> None:
        """Remember the canary of ``device`` in the record (when the export is the cache's and writing is on)."""
        self.canaries[device] = digest
        if not self.writes:
            return
        record = _read_record(self.directory)
        if record is None:
            return
        record["canaries"] = dict(self.canaries)
        try:
            atomic_write_json(_record_path(self.directory), record, indent=1)
        except OutputError:
            pass  # the next run computes it again


def _cache_base(root: PathLike | None) -> Path:
    return Path(root) if root is not None else export_cache_root()


def _temporary() -> Path:
    """A folder of this process for an export the cache may not hold (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="qaclip-onnx-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def cached_export(
    checkpoint: PathLike,
    *,
    arch: str | None = None,
    precision: str = "fp32",
    opset: int | None = None,
    name: str | None = None,
    root: PathLike | None = None,
    verify: Verifier | None = None,
    mode: str | None = None,
) -> CachedExport:
    """The export of ``checkpoint`` as ``mode`` (default: from QACLIP_NO_CACHE, ...) allows: a valid cached one, or a fresh one."""
    from qaclip_harness.export.onnx import DEFAULT_OPSET
    from qaclip_harness.fetch.digests import checkpoint_digest

    mode = mode or mode_from_environment()
    opset = DEFAULT_OPSET if opset is None else opset
    sha = checkpoint_digest(checkpoint)
    make = {"arch": arch, "precision": precision, "opset": opset, "name": name, "verify": verify}
    if mode == "off":
        return _fresh(checkpoint, _temporary() / cache_key(sha, opset, precision), sha, make)
    base = _cache_base(root)
    directory = base / cache_key(sha, opset, precision)
    if mode == "read-only":
        if directory.exists():
            reason = stale_reason(directory, sha, opset, precision)
            if reason is None:
                return CachedExport(
                    directory, sha, True, False, dict((_read_record(directory) or {}).get("canaries") or {})
                )
            _say(f"ONNX export in the cache not used (read-only cache; exported into a temporary folder): {reason}")
        return _fresh(checkpoint, _temporary() / directory.name, sha, make)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # QACLIP_CACHE read-only, or a file: one line naming the folder
        raise OutputError(
            f"cannot create the ONNX export cache {base} (set by QACLIP_CACHE, default ~/.cache/qaclip): "
            f"{e.strerror or e}"
        ) from None
    from filelock import FileLock

    with FileLock(str(directory) + ".lock"):
        if mode == "use" and directory.exists():
            reason = stale_reason(directory, sha, opset, precision)
            if reason is None:
                return CachedExport(
                    directory, sha, True, True, dict((_read_record(directory) or {}).get("canaries") or {})
                )
            _say(f"stale ONNX export in the cache, rebuilt: {reason}")
        return rebuild(checkpoint, directory, sha, opset, precision, make)


def rebuild(checkpoint: PathLike, directory: Path, sha: str, opset: int, precision: str, make: dict) -> CachedExport:
    """Export ``checkpoint`` anew into the cache folder ``directory`` (the caller holds its lock), with its record."""
    shutil.rmtree(directory, ignore_errors=True)
    _record_path(directory).unlink(missing_ok=True)
    fresh = _fresh(checkpoint, directory, sha, make)
    fields = export_fields(sha, opset, precision)
    atomic_write_json(_record_path(directory), {"key": make_key(fields), "fields": fields, "canaries": {}}, indent=1)
    reason = stale_reason(directory, sha, opset, precision)
    if reason is not None:  # cannot happen unless the disk changed under us; never hand it out
        raise ExportError(f"the fresh export in {directory} does not check out: {reason}")
    fresh.writes = True
    return fresh


def _fresh(checkpoint: PathLike, directory: Path, sha: str, make: dict) -> CachedExport:
    from qaclip_harness.export.onnx import export_checkpoint

    export_checkpoint(checkpoint, directory, checkpoint_sha256=sha, **make)
    return CachedExport(directory, sha, False, False)


def canary_digest(arrays: dict) -> str:
    """sha256 over the canary's arrays (name, dtype, shape and bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}\0{a.dtype}\0{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _say(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
