"""A checksum lock file, like a package lock: the first verified download of each file records its
sha256 and size; every later download and every cached copy is checked against that record.

Model cards carry no sha256 for most published checkpoints, so a download is otherwise checked
only against the ETag that the same server sends with it. With a lock file committed beside a
project (or kept on a CI runner), a file that changes upstream or on disk is reported with both
digests instead of being used. The active file is ``QACLIP_LOCK_FILE`` (read when used) or the
suite's ``--lock-file``; without one nothing is recorded.

Format (JSON, sorted, one entry per file)::

    {"version": 1, "files": {"hf://models/TencentARC/QA-CLIP@main/QA-CLIP-base.pt":
        {"sha256": "...", "size": 752337589, "recorded": "2026-11-27T12:00:00Z"}}}
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import ChecksumError, QAClipError

VERSION = 1
ENV = "QACLIP_LOCK_FILE"


class LockFileError(QAClipError, ValueError):
    """A lock file that cannot be read or does not follow the format."""


def hub_key(repo_id: str, filename: str, repo_type: str = "model", revision: str | None = None) -> str:
    """The entry name of a Hub file (independent of the endpoint it is fetched from)."""
    return f"hf://{repo_type}s/{repo_id}@{revision or 'main'}/{filename}"


class ChecksumLock:
    """One lock file on disk; every read and write happens under a file lock (safe for parallel workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def _guard(self) -> FileLock:
        return FileLock(str(self.path) + ".lock")

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise LockFileError(
                f"lock file {self.path} cannot be read as JSON ({e}); fix it or delete it to record anew"
            ) from None
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, dict):
            raise LockFileError(f"lock file {self.path}: expected an object with a 'files' mapping")
        for key, entry in files.items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int)
            ):
                raise LockFileError(f"lock file {self.path}: entry {key!r} needs 'sha256' (hex) and 'size' (bytes)")
        return files

    def entry(self, key: str) -> dict[str, Any] | None:
        """The recorded ``{"sha256", "size", ...}`` of ``key``, or None."""
        with self._guard():
            return self._read().get(key)

    def record(self, key: str, sha256: str, size: int) -> dict[str, Any]:
        """Record ``key`` unless it is recorded already; returns the entry in force (a mismatch raises)."""
        with self._guard():
            files = self._read()
            if key in files:
                check(files[key], key, sha256, size, self.path)
                return files[key]
            files[key] = {
                "sha256": sha256,
                "size": int(size),
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self._write({"version": VERSION, "files": dict(sorted(files.items()))})
            return files[key]

    def _write(self, doc: dict[str, Any]) -> None:
        # A temporary beside the file, then one rename (the harness's files.py does the same; the
        # core cannot import it). Temporaries of writers that died are removed first.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for old in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            pid = old.name[len(self.path.name) + 2 : -len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                old.unlink(missing_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LockFileError(
                f"cannot write the lock file {self.path}: {e.strerror or e}; "
                f"nothing was recorded (the file as it was is kept)"
            ) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check(entry: dict[str, Any], key: str, sha256: str, size: int, lock_path: Path, where: str = "") -> None:
    """Raise ChecksumError naming both values when a file differs from its lock entry."""
    if entry["sha256"] != sha256 or entry["size"] != size:
        raise ChecksumError(
            f"{where or key}: differs from its record in the lock file {lock_path}: recorded sha256 {entry['sha256']} "
            f"({entry['size']:,} bytes), found sha256 {sha256} ({size:,} bytes). Either the file changed upstream "
            f"or on disk: if the new file is intended, delete its entry {key!r} from the lock file."
        )


def active_lock() -> ChecksumLock | None:
    """The lock named by ``QACLIP_LOCK_FILE`` (read now), or None."""
    path = os.environ.get(ENV, "").strip()
    return ChecksumLock(path) if path else None
