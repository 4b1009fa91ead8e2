"""Files the harness writes: atomically (a temporary beside the target, then one rename), and the
temporaries of processes that died before their rename cleaned up on a later run.

A temporary is named ``.<target name>.<pid>.tmp`` (a folder: ``.<target name>.<pid>.tmpdir``), so a
later process can tell whose it is: one whose process is gone is debris from a kill or a crash.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Union

from qaclip_core.errors import QAClipError

PathLike = Union[str, "os.PathLike[str]"]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(dir)?$")


class OutputError(QAClipError, OSError):
    """A file or folder the run must write cannot be written (full disk, no permission, a file in the way)."""


def temp_path(target: PathLike, folder: bool = False) -> Path:
    """The temporary that :func:`atomic_write_bytes` (or a folder install) uses for ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp{'dir' if folder else ''}")


def why_not_written(e: OSError) -> str:
    """Why a write failed, in words (a full disk and a file size limit named as such)."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EFBIG:
        return "file too large (a file size limit is set)"
    return e.strerror or str(e)


def atomic_write_bytes(target: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` through a temporary beside it: readers see the old file or the whole new one."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {why_not_written(e)}") from None
    return target


def atomic_write_text(target: PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: PathLike, obj: Any, **dumps: Any) -> Path:
    """:func:`atomic_write_bytes` of ``obj`` as JSON (``dumps`` are ``json.dumps`` keywords)."""
    return atomic_write_text(target, json.dumps(obj, **dumps) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder: PathLike, pattern: re.Pattern[str] = _TEMP) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writing process no longer exists; returns what was removed.

    ``pattern`` matches a temporary's name and captures its writer's process id as ``pid`` (by default
    this module's ``.<name>.<pid>.tmp`` and ``.tmpdir``).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or int(m.group("pid")) == os.getpid() or _alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another process cleaned it first, or the folder is read-only: harmless
    return removed
