"""The export cache: one folder per (checkpoint sha256, opset, precision, package version), rebuilt when stale.

A folder is used only when its manifest names that checkpoint, opset, precision and version
and every file it lists is there with its size and sha256; anything else (an interrupted
export, a truncated file, a manifest from another checkpoint or version) is removed and the
export made again, never used. A file lock serialises exporters of one key (xdist workers).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Union

from qaclip_harness.errors import ExportError
from qaclip_harness.export.manifest import Verifier, read_manifest
from qaclip_harness.files import OutputError

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def export_cache_root() -> Path:
    """``<package cache>/onnx`` (``$QACLIP_CACHE`` or ``~/.cache/qaclip``)."""
    from qaclip_core.pretrained import cache_root

    return cache_root() / "onnx"


def cache_key(checkpoint_sha256: str, opset: int, precision: str, version: str | None = None) -> str:
    """The folder name of one export in the cache."""
    import qaclip_core

    return f"{checkpoint_sha256[:24]}-opset{opset}-{precision}-qaclip{version or qaclip_core.__version__}"


def stale_reason(directory: Path, checkpoint_sha256: str, opset: int, precision: str) -> str | None:
    """Why the cached export in ``directory`` cannot be used for this key, or None when it can."""
    import qaclip_core

    try:
        manifest = read_manifest(directory)
        manifest.verify_files(directory)
    except ExportError as e:
        return str(e)
    wanted = {
        "checkpoint_sha256": checkpoint_sha256,
        "opset": opset,
        "precision": precision,
        "qaclip_version": qaclip_core.__version__,
    }
    for key, value in wanted.items():
        if getattr(manifest, key) != value:
            return f"{directory}: manifest has {key} {getattr(manifest, key)!r}, {value!r} wanted"
    return None


def cached_export(
    checkpoint: PathLike,
    *,
    arch: str | None = None,
    precision: str = "fp32",
    opset: int | None = None,
    name: str | None = None,
    root: PathLike | None = None,
    verify: Verifier | None = None,
) -> tuple[Path, str]:
    """(export folder, checkpoint sha256) for ``checkpoint``: a valid cached export, or a fresh one made under a lock."""
    from filelock import FileLock

    from qaclip_harness.export.onnx import DEFAULT_OPSET, export_checkpoint
    from qaclip_harness.fetch.digests import checkpoint_digest

    opset = DEFAULT_OPSET if opset is None else opset
    sha = checkpoint_digest(checkpoint)
    base = Path(root) if root is not None else export_cache_root()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # QACLIP_CACHE read-only, or a file: one line naming the folder
        raise OutputError(
            f"cannot create the ONNX export cache {base} (set by QACLIP_CACHE, default ~/.cache/qaclip): "
            f"{e.strerror or e}"
        ) from None
    directory = base / cache_key(sha, opset, precision)
    with FileLock(str(directory) + ".lock"):
        reason = stale_reason(directory, sha, opset, precision) if directory.exists() else "absent"
        if reason is None:
            return directory, sha
        if reason != "absent":
            msg = f"stale ONNX export in the cache, rebuilt: {reason}"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            shutil.rmtree(directory)
        export_checkpoint(
            checkpoint,
            directory,
            arch=arch,
            precision=precision,
            opset=opset,
            name=name,
            checkpoint_sha256=sha,
            verify=verify,
        )
        reason = stale_reason(directory, sha, opset, precision)
        if reason is not None:  # cannot happen unless the disk changed under us; never hand it out
            raise ExportError(f"the fresh export in {directory} does not check out: {reason}")
    return directory, sha
