"""Digests that name what was evaluated: a file's sha256 (reusing its ``.sha256`` record), a folder's, a checkpoint's."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

import qaclip_core
import qaclip_harness
from qaclip_core.pretrained import cached_sha256, sha256_file

PathLike = Union[str, "os.PathLike[str]"]
# Files shipped inside the installed packages (the fixture): hashed in full, never given a record
# beside them, since the package folder may be read-only and is not ours to write into.
_PACKAGES = tuple(Path(str(p.__file__)).resolve().parent for p in (qaclip_core, qaclip_harness))


def sha256_of(path: PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative path and digest of each, in order).

    Reuses a file's ``.sha256`` record while its size and modification time are unchanged
    (unless QACLIP_VERIFY), so naming a checkpoint in a report costs no second read.
    """
    path = Path(path)
    if not path.is_dir():
        return cached_sha256(path)
    h = hashlib.sha256()
    for f in sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(path).parts and not p.name.endswith((".sha256", ".lock"))
    ):
        h.update(f"{f.relative_to(path).as_posix()}\0{cached_sha256(f)}\n".encode())
    return h.hexdigest()


def checkpoint_digest(path: PathLike) -> str:
    """sha256 of a checkpoint file, remembered in a ``.sha256`` record, except for files shipped inside the packages."""
    path = Path(path)
    resolved = path.resolve()
    if any(package in resolved.parents for package in _PACKAGES):
        return sha256_file(path)
    return cached_sha256(path)
