"""Data identity before any decoding: the images' content digest, remembered per folder state.

A cached result is keyed by the digest of the data's bytes, which is known only after every
image was read. So that a second run need not read them all again, the digest is recorded under
a signature of the files' paths, sizes, modification times, inode-change times, inodes and
devices, and of the code that computes the digest (the project's source, as in a feature key).

Why the inode-change time (``st_ctime_ns``): any write to a file, and any change of its
modification time, sets it to the present, and no system call sets it back; so a file rewritten
in place with its size kept and its modification time restored still gets a new signature and
is read again. A content sample would be cheaper for huge files but misses a rewrite outside the
sample. A copy or restore of the folder (cp -a, rsync, tar) also gets a new signature, which
costs one more read of the data, never a wrong digest. ``--verify`` (QACLIP_VERIFY) ignores the
records and reads everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qaclip_harness.cache.keys import source_digest
from qaclip_harness.files import OutputError, atomic_write_json


def signature(kind: str, files: Sequence[Path], code: str = "") -> str:
    """sha256 over ``kind``, the digest's ``code`` and each file's path, size, times (modification, inode change), inode, device."""
    h = hashlib.sha256(f"{kind}\n{code}\n".encode())
    for f in files:
        st = os.stat(f)
        h.update(
            f"{os.path.realpath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    return h.hexdigest()


@dataclass
class IdentityRecords:
    """``<root>/identity/<signature>.json``: the images digest of a folder in a given state."""

    root: Path
    verify: bool = False  # read everything, whatever the records say
    writes: bool = True

    def images_digest(self, kind: str, files: Sequence[Path], compute: Callable[[], str]) -> str:
        """The recorded digest of ``files`` while they are unchanged, else ``compute()`` (then recorded)."""
        code = json.dumps(source_digest(), sort_keys=True)  # a changed digest function never reads old records
        sig = signature(kind, files, code)
        record = Path(self.root) / "identity" / f"{sig}.json"
        if not self.verify:
            found = self._read(record, sig)
            if found is not None:
                return found
        digest = compute()
        if self.writes and signature(kind, files, code) == sig:  # files changed while read: nothing to record
            try:
                atomic_write_json(
                    record,
                    {
                        "signature": sig,
                        "kind": kind,
                        "images": digest,
                        "files": len(files),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                )
            except OutputError:
                pass  # a full disk costs the next run one more read, nothing else
        return digest

    @staticmethod
    def _read(record: Path, sig: str) -> str | None:
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # a damaged record is no record
            return None
        if not isinstance(doc, dict) or doc.get("signature") != sig or not isinstance(doc.get("images"), str):
            return None
        return doc["images"]
