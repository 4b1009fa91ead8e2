"""The feature cache: image features, text features and zero-shot classifiers, keyed by everything that produces them.

An entry is two files under ``<cache>/features/``: ``<key>.npz`` (plain arrays: the result and
its canary, written first) and ``<key>.json`` (the record: the key's fields, the payload's size
and sha256, each array's shape and dtype, the run and date that computed it), each written
atomically, the record last. Two workers that compute one entry write the same bytes; the
second rename wins.

Every read checks the entry before it is used: the record must name this key and hash to it,
the payload must have the record's size and sha256, load without unpickling anything
(``allow_pickle=False``), hold the arrays the record lists, finite, of the shapes the caller
expects (one row per item, the items' ids in order); and the canary the caller computes now must
equal the stored one bit for bit. An entry that fails any of these is one warning naming its
file, then recomputed and (unless the cache is read-only) rewritten: never a failed case.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qaclip_harness.cache.keys import make_key
from qaclip_harness.cache.space import make_room, say, touch
from qaclip_harness.files import OutputError, atomic_write_bytes, atomic_write_json

MODES = ("use", "read-only", "refresh", "off")
Arrays = dict[str, np.ndarray]
# what the caller expects of an entry's arrays: None when they fit, else why not
Check = Callable[[Arrays], Optional[str]]
CANARY = "canary_"  # prefix of the canary's arrays inside a payload


def run_id() -> str:
    """Who computed an entry: the CI run (GitHub Actions' run id and attempt) or this host and process."""
    if os.environ.get("GITHUB_RUN_ID"):
        return f"github run {os.environ['GITHUB_RUN_ID']}.{os.environ.get('GITHUB_RUN_ATTEMPT', '1')}"
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass
class Provenance:
    """Where a result came from: ``computed`` here, or ``reused`` from the run and date that computed it."""

    status: str  # computed, reused
    key: str | None = None
    run: str | None = None
    date: str | None = None
    note: str = ""  # why the cache was not used or not written, when it was not
    sha256: str | None = None  # of the result's arrays: a warm and a cold run can be compared bit for bit
    # image features partly reused from the chunks of an interrupted run (qaclip_harness.eval.resume)
    resumed: dict[str, object] | None = None

    def of(self, arrays: Mapping[str, np.ndarray]) -> Provenance:
        """This provenance with the digest of ``arrays`` (the result it describes)."""
        self.sha256 = arrays_digest(arrays)
        return self

    def as_dict(self) -> dict[str, object]:
        """The report's form."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over each array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype}\0{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class EntryError(ValueError):
    """Why a cache entry cannot be used (damaged, foreign, short, not finite...)."""


def pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of ``arrays`` (uncompressed; plain numeric arrays only)."""
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"{name}: object arrays are not stored (nothing in the cache is unpickled)")
    buf = io.BytesIO()
    # np.savez's layout with a fixed date: the same arrays give the same bytes, so two workers
    # writing one entry write identical files and a record always matches either payload
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes) -> Arrays:
    """The arrays of ``.npz`` bytes, loaded without unpickling (EntryError for anything else)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise EntryError(f"not a plain array file ({type(e).__name__}: {str(e)[:200]})") from None


def describe_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, object]]:
    """Each array's shape and dtype, as the record lists them."""
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())}


def canary_difference(stored: Arrays, now: Arrays) -> str | None:
    """None when every array of ``now`` equals its stored twin bit for bit, else what differs."""
    for name, want in now.items():
        got = stored.get(name)
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            what = "absent" if got is None else f"{got.dtype} {list(got.shape)}, now {want.dtype} {list(want.shape)}"
            return f"{name}: {what}"
        if not np.array_equal(got, want):
            d = np.abs(got.astype(np.float64) - want.astype(np.float64))
            return f"{name}: {int((got != want).sum())} values differ, max |d| {float(np.nanmax(d)):.3g}"
    return None


@dataclass
class FeatureStore:
    """``<root>/features``: lookups and writes as ``mode`` allows (use, read-only, refresh, off)."""

    root: Path
    mode: str = "use"
    run: str = field(default_factory=run_id)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.root = Path(self.root)

    @property
    def folder(self) -> Path:
        """Where the entries are."""
        return self.root / "features"

    @property
    def reads(self) -> bool:
        """Whether hits are used (not under --no-cache or --refresh-cache)."""
        return self.mode in ("use", "read-only")

    @property
    def writes(self) -> bool:
        """Whether computed results are stored (not under --no-cache or on a read-only cache)."""
        return self.mode in ("use", "refresh")

    def paths(self, key: str) -> tuple[Path, Path]:
        """(record, payload) of the entry ``key``."""
        return self.folder / f"{key}.json", self.folder / f"{key}.npz"

    def lookup(
        self,
        fields: Mapping[str, object],
        check: Check | None = None,
        canary: Callable[[], Arrays] | None = None,
    ) -> tuple[Arrays, Provenance] | tuple[None, str]:
        """``(arrays, Provenance)`` of a usable entry for ``fields``, else ``(None, why not)``.

        ``check`` says whether the arrays fit this run's items; ``canary`` computes this run's
        canary, which must equal the stored one (called only for an entry that passed everything else).
        """
        key = make_key(fields)
        if not self.reads:
            return None, ""
        record_path, data_path = self.paths(key)
        if not record_path.is_file():
            return None, ""
        try:
            meta = self._record(record_path, key)
            arrays = self._payload(data_path, meta)
            why = check(arrays) if check is not None else None
            if why:
                raise EntryError(why)
            if canary is not None:
                differs = canary_difference(
                    {k[len(CANARY) :]: v for k, v in arrays.items() if k.startswith(CANARY)}, canary()
                )
                if differs:
                    say(
                        f"feature cache entry {data_path} matches its key but not this run's canary ({differs}): "
                        "something the key does not name changes the features; recomputing it"
                    )
                    return None, f"recomputed: this run does not reproduce the entry's canary ({differs})"
        except EntryError as e:
            say(f"feature cache entry {data_path} cannot be used ({e}); recomputing it")
            return None, f"recomputed: the cached entry was unusable ({e})"
        touch(record_path)
        result = {k: v for k, v in arrays.items() if not k.startswith(CANARY)}
        run, date = meta.get("run"), meta.get("date")  # shown in the report: text, whatever the record holds
        return result, Provenance("reused", key, None if run is None else str(run), None if date is None else str(date))

    @staticmethod
    def _record(path: Path, key: str) -> dict:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise EntryError(f"its record {path.name} is not readable JSON: {type(e).__name__}") from None
        if not isinstance(meta, dict):
            raise EntryError(f"its record holds a {type(meta).__name__}, not an object")
        if meta.get("key") != key or not isinstance(meta.get("fields"), dict) or make_key(meta["fields"]) != key:
            raise EntryError("its record belongs to another key (a foreign or edited entry)")
        if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
            raise EntryError("its record has no payload size and sha256")
        if not isinstance(meta.get("arrays"), dict):
            raise EntryError("its record does not list the payload's arrays")
        return meta

    @staticmethod
    def _payload(path: Path, meta: dict) -> Arrays:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise EntryError(f"the payload cannot be read ({e.strerror or e})") from None
        if len(data) != meta["bytes"]:
            raise EntryError(f"the payload has {len(data):,} bytes, its record {meta['bytes']:,}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["sha256"]:
            raise EntryError(f"the payload's sha256 is {digest[:16]}..., its record says {meta['sha256'][:16]}...")
        arrays = unpack(data)
        if describe_arrays(arrays) != meta["arrays"]:
            raise EntryError("the payload's arrays are not those its record lists")
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise EntryError(f"{name} holds NaN or infinity")
        return arrays

    def remove(self, fields: Mapping[str, object]) -> bool:
        """Delete the entry of ``fields`` (record first, so no reader sees a record without its payload); whether one was there."""
        found = False
        for path in self.paths(make_key(fields)):
            try:
                path.unlink()
                found = True
            except FileNotFoundError:
                pass
            except OSError as e:  # left for the space budget to evict: never a failed case
                say(f"feature cache entry {path} not removed: {e.strerror or e}")
        return found

    def save(
        self,
        fields: Mapping[str, object],
        arrays: Arrays,
        what: str,
        canary: Callable[[], Arrays | None] | None = None,
        note: str = "",
    ) -> Provenance:
        """Store ``arrays`` and this run's canary under the key of ``fields`` (when writing is on and there is room)."""
        key = make_key(fields)
        computed = Provenance("computed", key, self.run, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), note)
        if not self.writes:
            if self.mode == "read-only":
                computed.note = "; ".join(p for p in (note, "not stored: the cache is read-only") if p)
            return computed
        payload = dict(arrays)
        if canary is not None:
            now = canary()  # None: no canary for this path, so a later lookup never reuses the entry
            payload.update({CANARY + k: v for k, v in (now or {}).items()})
        data = pack(payload)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not make_room(self.root, len(data), f"{what} ({len(data):,} bytes)"):
            computed.note = "not stored: no room (see the warning)"
            return computed
        record = {
            "key": key,
            "run": computed.run,
            "date": computed.date,
            "what": what,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "arrays": describe_arrays(payload),
            "fields": json.loads(json.dumps(dict(fields), default=str)),
        }
        record_path, data_path = self.paths(key)
        try:
            atomic_write_bytes(data_path, data)
            atomic_write_json(record_path, record, indent=1)
        except OutputError as e:  # a full disk loses the entry, never the run
            say(f"{what} not cached: {e}")
            computed.note = "not stored: the write failed (see the warning)"
        return computed
