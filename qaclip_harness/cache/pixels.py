"""The pixel cache: each image of a known data build decoded and resized once, kept as uint8.

The reference preprocessing is a PIL resize to a square, the RGB conversion, then ``ToTensor``
and normalisation; the resized RGB ``uint8`` image is the last step that depends on PIL
(:meth:`qaclip_core.transforms.ClipImageTransform.pixels`). It is stored once per (data
fingerprint, resolution, decode definition) as an ``N x R x R x 3`` array that later runs (any
process) memory-map; the float conversion happens in the encoder's batch
(:meth:`~qaclip_core.transforms.ClipImageTransform.from_pixels`), bit-equal to decoding.

The decode definition names the reader and transform classes, the source of every module that
defines them and of the loader, the loaded modules from outside the packages (a ``conftest.py``
that patches a reader), and Pillow, its codecs, torchvision and NumPy: nothing process-specific.

An entry is a folder ``<cache>/pixels/<key>/`` holding ``pixels.npy``, ``rows.npy`` (the sha256
of every image's row) and ``meta.json`` (the key's fields, the rows file's sha256, the canary's
sha256: the probe images' pixels through the same reader and transform). Opening an entry checks
the record, the rows file and the canary (recomputed now); each row is checked against its
digest as it is read, and a damaged row is decoded instead. An entry is built in a temporary
folder beside it (its blocks allocated up front, so a full disk fails at once with ENOSPC instead
of a SIGBUS in the middle of the mapping) and moved into place with one rename when every image
was written; a second worker that built it too drops its copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qaclip_harness.cache.keys import library_versions, make_key, module_digest, source_digest
from qaclip_harness.cache.space import gb, make_room, say, touch
from qaclip_harness.files import remove_stale_temporaries, temp_path

ROW_DIGEST = 32  # bytes of a row's sha256


def keys_digest(keys: Sequence[object]) -> str:
    """sha256 of the items' keys in order: an entry fits a dataset only in the same order."""
    return hashlib.sha256("\n".join(str(k) for k in keys).encode("utf-8", "surrogateescape")).hexdigest()


def row_digest(row: np.ndarray) -> bytes:
    """sha256 of one image's pixels."""
    return hashlib.sha256(np.ascontiguousarray(row).data).digest()


def stable_repr(obj: object) -> str:
    """``repr(obj)`` without memory addresses (a function's repr holds one): the same text in every process."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _classes(obj: object) -> list[type]:
    return [c for c in type(obj).__mro__ if c is not object]


def decode_definition(dataset: Any) -> dict[str, object]:
    """How a dataset's images become its pixels: reader and transform classes, the source of their modules, the codecs."""
    from PIL import features

    from qaclip_harness.data import loader

    transform = dataset.transform
    parts = _classes(dataset) + _classes(transform)
    base = getattr(dataset, "base", None)  # a folder reader's listing (IndexedImages over an ImageFolder)
    if base is not None:
        parts += _classes(base)
    modules = {c.__module__: sys.modules.get(c.__module__) for c in parts}
    modules[loader.__name__] = loader
    return {
        "reader": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "transform": stable_repr(transform),
        "source": module_digest(*(m for _, m in sorted(modules.items()) if m is not None)),
        "outside": source_digest()["outside"],  # a conftest.py or plugin may patch any of it
        "versions": {k: library_versions()[k] for k in ("Pillow", "torchvision", "numpy")},
        "codecs": {name: features.version(name) for name in ("jpg", "jpg_2000", "zlib", "libtiff", "webp")},
    }


class MemoryPixels:
    """A pixel writer into memory (``put``): how the canary takes the loader's pixel path without a cache entry."""

    def __init__(self, shape: tuple[int, ...]):
        self.array = np.zeros(shape, dtype=np.uint8)

    def put(self, index: int, pixels: np.ndarray) -> None:
        """Keep the pixels of item ``index``."""
        self.array[index] = pixels


class DiscardPixels:
    """A pixel writer that keeps nothing: a resumed run decodes only some items, on the uint8 path all the same."""

    def put(self, index: int, pixels: np.ndarray) -> None:
        """Drop the pixels of item ``index``."""

    def commit(self) -> Path | None:
        """Nothing is stored: no entry."""
        return None

    def abort(self) -> None:
        """Nothing to drop."""


DISCARD_PIXELS = DiscardPixels()


def probe_pixels(dataset: Any, num_workers: int = 0) -> np.ndarray | None:
    """The probe images' pixels through ``dataset``'s reader, transform and the batch loader (the pixel canary)."""
    from qaclip_harness.data.loader import ImageBatchLoader
    from qaclip_harness.data.probe_twin import probe_twin

    twin = probe_twin(dataset)
    if twin is None:
        return None
    _, height, width = twin.transform.output_shape
    memory = MemoryPixels((len(twin), height, width, 3))
    batches = [list(range(s, min(s + 7, len(twin)))) for s in range(0, len(twin), 7)]
    with quiet_probe():
        for _ in ImageBatchLoader(twin, batches, num_workers=num_workers, pixel_writer=memory):
            pass
    return memory.array


@contextmanager
def quiet_probe() -> Iterator[None]:
    """Decoding the probe set without Pillow's note on its palette image with transparency (its RGB conversion is the test)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        yield


def canary_digest(pixels: np.ndarray) -> str:
    """sha256 of the canary's pixels and their shape."""
    return hashlib.sha256(f"{list(pixels.shape)}\n".encode() + np.ascontiguousarray(pixels).tobytes()).hexdigest()


class CachedPixels:
    """A cached entry's read-only array whose rows are checked against their sha256 as they are copied out."""

    def __init__(self, folder: Path, array: np.ndarray, rows: np.ndarray):
        self.folder = folder
        self.array = array
        self.rows = rows
        self.damaged: list[int] = []
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, R, R, 3)``."""
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return len(self.array)

    def copy_into(self, out: np.ndarray, start: int) -> list[int]:
        """Copy rows ``start ...`` into ``out`` (as many as it holds); the indices of rows whose digest is wrong."""
        np.copyto(out, self.array[start : start + len(out)])
        bad = [start + j for j in range(len(out)) if row_digest(out[j]) != self.rows[start + j].tobytes()]
        if bad:
            with self._lock:
                self.damaged.extend(bad)
        return bad


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
        self.rows = np.zeros((shape[0], ROW_DIGEST), dtype=np.uint8)

    def put(self, index: int, pixels: np.ndarray) -> None:
        """Store the pixels of item ``index``."""
        self.array[index] = pixels
        self.rows[index] = np.frombuffer(row_digest(pixels), dtype=np.uint8)
        self.written[index] = True

    def commit(self) -> Path | None:
        """Move the entry into place if every item was written; the entry's folder, or ``None``."""
        if not self.written.all():
            self.abort()
            return None
        try:
            self.array.flush()
            del self.array
            np.save(self.tmp / "rows.npy", self.rows, allow_pickle=False)
            self.meta["rows_sha256"] = hashlib.sha256((self.tmp / "rows.npy").read_bytes()).hexdigest()
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


class _Unusable(ValueError):
    """Why an entry cannot be used."""


@dataclass
class PixelStore:
    """``<root>/pixels``: entries opened read-only and checked, and new ones written when ``writes``."""

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

    def open(
        self,
        fields: Mapping[str, Any],
        item_keys: Sequence[object],
        canary: Callable[[], np.ndarray | None] | None = None,
    ) -> CachedPixels | None:
        """The checked entry for these items, or ``None`` (absent, or unusable: one warning names it)."""
        if not self.reads:
            return None
        key = make_key(fields)
        folder = self.folder / key
        if not (folder / "meta.json").is_file():
            return None
        try:
            found = self._checked(folder, key, fields, item_keys, canary)
        except _Unusable as e:
            say(f"pixel cache {folder} cannot be used ({e}); decoding instead")
            if self.writes:
                self.remove(folder)  # a rebuilt entry can only be installed where none is
            return None
        touch(folder / "meta.json")
        return found

    @staticmethod
    def _checked(
        folder: Path,
        key: str,
        fields: Mapping[str, Any],
        item_keys: Sequence[object],
        canary: Callable[[], np.ndarray | None] | None,
    ) -> CachedPixels:
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _Unusable(f"meta.json is not readable JSON: {type(e).__name__}") from None
        if not isinstance(meta, dict) or meta.get("key") != key or make_key(meta.get("fields") or {}) != key:
            raise _Unusable("meta.json belongs to another key (a foreign or edited entry)")
        r = int(fields["resolution"])
        want = (len(item_keys), r, r, 3)
        if meta.get("items") != keys_digest(item_keys) or meta.get("shape") != list(want):
            raise _Unusable(f"it holds other items than the {want[0]:,} of this dataset")
        try:
            rows_bytes = (folder / "rows.npy").read_bytes()
            if hashlib.sha256(rows_bytes).hexdigest() != meta.get("rows_sha256"):
                raise _Unusable("rows.npy does not match the sha256 in meta.json")
            rows = np.load(folder / "rows.npy", allow_pickle=False)
            array = np.load(folder / "pixels.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise _Unusable(f"{type(e).__name__}: {e}") from None
        if rows.shape != (want[0], ROW_DIGEST) or rows.dtype != np.uint8:
            raise _Unusable(f"rows.npy holds {rows.dtype} {list(rows.shape)}")
        if tuple(array.shape) != want or array.dtype != np.uint8:
            raise _Unusable(f"pixels.npy holds {array.dtype} {list(array.shape)}, not uint8 {list(want)}")
        if canary is not None:
            now = canary()
            if now is None or canary_digest(now) != meta.get("canary"):
                raise _Unusable("this run does not reproduce its canary (the probe images' pixels)")
        return CachedPixels(folder, array, rows)

    def remove(self, folder: Path) -> None:
        """Take an entry out of use: renamed aside first (readers holding it keep their files), then deleted."""
        aside = temp_path(folder.with_name(folder.name + "-removed"), folder=True)
        try:
            os.replace(folder, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def writer(
        self,
        fields: Mapping[str, Any],
        item_keys: Sequence[object],
        what: str,
        canary: np.ndarray | None = None,
    ) -> PixelWriter | None:
        """A :class:`PixelWriter` for a new entry, or ``None`` (not writing, no room: one line says why)."""
        if not self.writes:
            return None
        r = int(fields["resolution"])
        shape = (len(item_keys), r, r, 3)
        need = int(np.prod(shape)) + shape[0] * ROW_DIGEST + 8192
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        if not make_room(Path(self.root), need, f"pixel cache of {what} ({gb(need)})"):
            return None
        key = make_key(fields)
        if not self.reads and (self.folder / key).exists():  # --refresh-cache: the new entry replaces the old
            self.remove(self.folder / key)
        meta = {
            "key": key,
            "fields": json.loads(json.dumps(dict(fields), default=str)),
            "items": keys_digest(item_keys),
            "shape": list(shape),
            "canary": canary_digest(canary) if canary is not None else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            return PixelWriter(self.folder / key, meta, shape)
        except OSError as e:
            why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            say(f"pixel cache of {what} not written: {why} ({gb(need)} needed in {self.folder}); decoding without it")
            return None
