"""The feature cache: image features, text features and zero-shot classifiers, keyed by everything that produces them.

An entry is two files under ``<cache>/features/``: ``<key>.pt`` (the tensors, written first) and
``<key>.json`` (the record: the key's fields, the run and date that computed it, its size),
each written atomically, the record last, so a reader that finds a record finds whole data.
Two workers that compute one entry write the same bytes; the second rename wins.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qaclip_harness.cache.keys import make_key
from qaclip_harness.cache.space import make_room, say, touch
from qaclip_harness.files import OutputError, atomic_write_bytes, atomic_write_json

MODES = ("use", "read-only", "refresh", "off")


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

    def as_dict(self) -> dict[str, object]:
        """The report's form."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


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

    def lookup(self, fields: Mapping[str, object]) -> tuple | None:
        """``(payload, Provenance)`` of the entry for ``fields``, or ``None`` (a miss, or reading is off)."""
        key = make_key(fields)
        if not self.reads:
            return None
        record, data = self.folder / f"{key}.json", self.folder / f"{key}.pt"
        if not record.is_file():
            return None
        import json

        try:
            meta = json.loads(record.read_text(encoding="utf-8"))
            payload = torch.load(io.BytesIO(data.read_bytes()), map_location="cpu", weights_only=True)
            if not isinstance(meta, dict) or not isinstance(payload, dict):
                raise ValueError("the record or the data is not a mapping")
            if meta.get("key") != key or payload.get("key") != key:
                raise ValueError("the entry holds another key")
        except (OSError, ValueError, RuntimeError, EOFError, RecursionError) as e:
            say(f"feature cache entry {data} cannot be read ({type(e).__name__}: {e}); recomputing it")
            return None
        touch(record)
        run, date = meta.get("run"), meta.get("date")  # shown in the report: text, whatever the record holds
        return payload, Provenance(
            "reused", key, None if run is None else str(run), None if date is None else str(date)
        )

    def save(self, fields: Mapping[str, object], payload: dict[str, object], what: str) -> Provenance:
        """Store ``payload`` under the key of ``fields`` (when writing is on and there is room); its provenance."""
        key = make_key(fields)
        computed = Provenance("computed", key, self.run, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if not self.writes:
            computed.note = "not stored: the cache is read-only" if self.mode == "read-only" else ""
            return computed
        buf = io.BytesIO()
        torch.save({**payload, "key": key}, buf)
        data = buf.getvalue()
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
            "fields": dict(fields),
        }
        try:
            atomic_write_bytes(self.folder / f"{key}.pt", data)
            atomic_write_json(self.folder / f"{key}.json", record, indent=1, default=str)
        except OutputError as e:  # a full disk loses the entry, never the run
            say(f"{what} not cached: {e}")
            computed.note = "not stored: the write failed (see the warning)"
        return computed
