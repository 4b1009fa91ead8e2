"""Zip members checked before extraction: none may land outside the target folder (zip-slip), and none may
collide with another (the same name twice, a file where another member needs a folder, a name too long for
the file system); then extraction, whose failures name the archive and the member."""

from __future__ import annotations

import errno
import os
import zipfile
import zlib
from pathlib import Path

from qaclip_harness.errors import DatasetError
from qaclip_harness.files import OutputError

NAME_MAX = 255  # bytes of one file or folder name on the file systems the suite runs on
# what reading a damaged or unusual member raises besides BadZipFile: a corrupt deflate stream, data cut
# short, a compression method or zip version zipfile does not implement, an impossible offset
DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OverflowError)


def _parts(name: str) -> list[str]:
    """The folders and file a member is extracted to, as zipfile computes them (it drops '', '.' and '..')."""
    return [p for p in name.split("/") if p not in ("", ".", "..")]


def check_members(zf: zipfile.ZipFile, target: Path, label: str) -> None:
    """Raise :class:`DatasetError` naming ``label`` and the member if one would extract outside ``target`` or
    collide with another member."""
    inside = Path(target).resolve()
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for member in zf.namelist():
        dest = (Path(target) / member).resolve()
        # containment by path components: /x/stage-evil is not inside /x/stage
        if dest != inside and inside not in dest.parents:
            raise DatasetError(f"{label}: member {member!r} would extract outside the target folder")
        parts = tuple(_parts(member))
        if not parts:
            raise DatasetError(f"{label}: member {member!r} names no file (only separators and dots)")
        long = next((p for p in parts if len(os.fsencode(p)) > NAME_MAX), None)
        if long is not None:
            raise DatasetError(f"{label}: member {member[:80]!r}... has a name longer than {NAME_MAX} bytes")
        if member.endswith("/"):
            folders.setdefault(parts, member)
            if parts in files:
                raise DatasetError(f"{label}: member {files[parts]!r} is a file, but {member!r} makes it a folder")
            continue
        if parts in files:
            raise DatasetError(f"{label}: member {member!r} is in the archive twice (as {files[parts]!r} too)")
        if parts in folders:
            raise DatasetError(f"{label}: member {member!r} is a file, but {folders[parts]!r} makes it a folder")
        files[parts] = member
        for i in range(1, len(parts)):
            folders.setdefault(parts[:i], member)
    clash = next((folders[p] for p in files if p in folders), None)
    if clash is not None:
        path = next(p for p in files if p in folders)
        raise DatasetError(f"{label}: member {files[path]!r} is a file, but {clash!r} needs it to be a folder")


def extract_all(zf: zipfile.ZipFile, target: Path, label: str) -> None:
    """Check the members of ``zf`` (:func:`check_members`), then extract them into ``target``.

    A damaged member is a DatasetError naming the archive; a full disk or a read-only target an
    OutputError naming the folder.
    """
    check_members(zf, target, label)
    for info in zf.infolist():
        try:
            zf.extract(info, target)
        except DAMAGED as e:
            raise DatasetError(f"{label}: member {info.filename!r} cannot be read ({type(e).__name__}: {e})") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                raise OutputError(f"cannot unpack {label} into {target}: {e.strerror or e}") from None
            raise DatasetError(f"{label}: member {info.filename!r} cannot be unpacked ({e.strerror or e})") from None
