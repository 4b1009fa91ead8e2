"""The pixel cache: each image of a known data build decoded and resized once, kept as uint8.

The reference preprocessing is a PIL resize to a square, the RGB conversion, then ``ToTensor``
and normalisation; the resized RGB ``uint8`` image is the last step that depends on PIL
(:meth:`qaclip_core.transforms.ClipImageTransform.pixels`). It is stored once per (data
fingerprint, resolution, resize definition, Pillow version) as an ``N x R x R x 3`` array that
later runs memory-map; the float conversion happens in the encoder's batch
(:meth:`~qaclip_core.transforms.ClipImageTransform.from_pixels`), bit-equal to decoding.

An entry is a folder ``<cache>/pixels/<key>/`` holding ``pixels.npy`` and ``meta.json``. It is
built in a temporary folder beside it (its blocks allocated up front, so a full disk fails at
once with ENOSPC instead of a SIGBUS in the middle of the mapping) and moved into place with
one rename when every image was written; a second worker that built it too drops its copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qaclip_harness.cache.keys import make_key
from qaclip_harness.cache.space import gb, make_room, say, touch
from qaclip_harness.files import remove_stale_temporaries, temp_path


def keys_digest(keys: Sequence[object]) -> str:
    """sha256 of the items' keys in order: an entry fits a dataset only in the same order."""
    return hashlib.sha256("\n".join(str(k) for k in keys).encode("utf-8", "surrogateescape")).hexdigest()


class PixelWriter:
    """An entry being built: fill :attr:`array` (every row), then :meth:`commit`; :meth:`abort` drops it."""

    def __init__(self, final: Path, meta: dict[str, object], shape: tuple):
        self.final = final
        self.meta = meta
        self.tmp = temp_path(final, folder=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        path = self.tmp / "pixels.npy"
        try:
            self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
            with open(path, "r+b") as f:  # real blocks now: a full disk is ENOSPC here, not SIGBUS later
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
        except BaseException:
            self.abort()
            raise
        self.written = np.zeros(shape[0], dtype=bool)

    def put(self, index: int, pixels: np.ndarray) -> None:
        """Store the pixels of item ``index``."""
        self.array[index] = pixels
        self.written[index] = True

    def commit(self) -> Path | None:
        """Move the entry into place if every item was written; the entry's folder, or ``None``."""
        if not self.written.all():
            self.abort()
            return None
        try:
            self.array.flush()
            del self.array
            (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=1), encoding="utf-8")
            with open(self.tmp / "pixels.npy", "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else another worker's entry is in place
                say(f"pixel cache {self.final} not written: {e.strerror or e}")
            self.abort()
            return self.final if (self.final / "meta.json").is_file() else None
        return self.final

    def abort(self) -> None:
        """Drop the temporary folder."""
        self.__dict__.pop("array", None)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class PixelStore:
    """``<root>/pixels``: entries opened read-only, and new ones written when ``writes``."""

    root: Path
    reads: bool = True
    writes: bool = True

    @property
    def folder(self) -> Path:
        """Where the entries are."""
        return Path(self.root) / "pixels"

    @staticmethod
    def fields(
        fingerprint: str, resolution: int, definition: Mapping[str, object], pillow: str | None
    ) -> dict[str, Any]:
        """What names an entry: the data, the resolution, how it was decoded and resized, and the Pillow that did it."""
        return {
            "what": "pixels",
            "data": fingerprint,
            "resolution": int(resolution),
            "definition": dict(definition),
            "pillow": pillow,
        }

    def open(self, fields: Mapping[str, Any], item_keys: Sequence[object]) -> np.ndarray | None:
        """The entry's read-only ``N x R x R x 3`` array for these items, or ``None``."""
        if not self.reads:
            return None
        folder = self.folder / make_key(fields)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(meta, dict):  # a damaged record: a miss
            return None
        r = int(fields["resolution"])
        want = (len(item_keys), r, r, 3)
        try:
            array = np.load(folder / "pixels.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            say(f"pixel cache {folder} cannot be read ({e}); decoding instead")
            return None
        if tuple(array.shape) != want or array.dtype != np.uint8 or meta.get("items") != keys_digest(item_keys):
            say(
                f"pixel cache {folder} holds {tuple(array.shape)} {array.dtype} for other items than the "
                f"{want[0]:,} of this dataset; decoding instead"
            )
            return None
        touch(folder / "meta.json")
        return array

    def writer(self, fields: Mapping[str, Any], item_keys: Sequence[object], what: str) -> PixelWriter | None:
        """A :class:`PixelWriter` for a new entry, or ``None`` (not writing, no room: one line says why)."""
        if not self.writes:
            return None
        r = int(fields["resolution"])
        shape = (len(item_keys), r, r, 3)
        need = int(np.prod(shape)) + 4096
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        if not make_room(Path(self.root), need, f"pixel cache of {what} ({gb(need)})"):
            return None
        key = make_key(fields)
        meta: dict[str, object] = {
            "key": key,
            "fields": dict(fields),
            "items": keys_digest(item_keys),
            "shape": list(shape),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            return PixelWriter(self.folder / key, meta, shape)
        except OSError as e:
            why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            say(f"pixel cache of {what} not written: {why} ({gb(need)} needed in {self.folder}); decoding without it")
            return None
