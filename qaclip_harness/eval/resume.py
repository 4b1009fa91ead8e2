"""Resuming an interrupted image encoding: a split's features stored in chunks as they are computed.

A case killed after encoding most of a large split (a preempted GPU runner, a cancelled job)
would otherwise start again from zero. While a split's image features are computed, each chunk
of ``QACLIP_RESUME_CHUNK`` images (rounded down to whole batches, so that every batch is the one
an uninterrupted run encodes, bit for bit) is stored as a feature cache entry of its own: the
split entry's fields plus the chunk's item range, with the run's image canary. A rerun looks each
chunk up under the rules of every other entry (record, payload digest, shape, the items' ids in
order, and this run's canary equal bit for bit: :mod:`qaclip_harness.cache.features`) and
encodes only the chunks it could not reuse. Once the split's own entry is stored, its chunks are
deleted. A run of several processes (torchrun) stores no chunks: each rank holds only its share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from qaclip_harness.cache.features import Arrays, Check, FeatureStore
from qaclip_harness.options import RESUME_CHUNK_IMAGES

DEFAULT_CHUNK_IMAGES = RESUME_CHUNK_IMAGES  # --resume-chunk's default
BatchResult = tuple[list[int], torch.Tensor]  # one batch's item ids and features


@dataclass(frozen=True)
class ChunkPlan:
    """How a split of ``items`` images in batches of ``batch_size`` falls into chunks of ``per_chunk`` batches."""

    items: int
    batch_size: int
    per_chunk: int

    @classmethod
    def of(cls, items: int, batch_size: int, chunk_images: int) -> ChunkPlan | None:
        """The plan for ``chunk_images`` images a chunk (at least one batch); None when chunks are off (0) or pointless."""
        if chunk_images <= 0 or items <= 0:
            return None
        plan = cls(items, batch_size, max(1, chunk_images // batch_size))
        return plan if plan.count > 1 else None  # one chunk is the split's own entry: nothing to resume from

    @property
    def batches(self) -> int:
        """How many batches the split has."""
        return -(-self.items // self.batch_size)

    @property
    def count(self) -> int:
        """How many chunks."""
        return -(-self.batches // self.per_chunk)

    def batch_range(self, chunk: int) -> range:
        """The batch indices of ``chunk``."""
        return range(chunk * self.per_chunk, min(self.batches, (chunk + 1) * self.per_chunk))

    def item_range(self, chunk: int) -> tuple[int, int]:
        """``(start, end)``: the item indices of ``chunk``."""
        batches = self.batch_range(chunk)
        return batches.start * self.batch_size, min(self.items, batches.stop * self.batch_size)

    def chunk_of(self, batch: int) -> int:
        """The chunk that holds batch ``batch``."""
        return batch // self.per_chunk


def chunk_fields(fields: Mapping[str, object], plan: ChunkPlan, chunk: int) -> dict[str, object]:
    """A chunk's key fields: its split entry's, and the items it holds."""
    start, end = plan.item_range(chunk)
    return {**fields, "what": "image feature chunk", "items": [start, end]}


@dataclass
class Resumed:
    """What a rerun took from an interrupted run's chunks: batches by index, and from which runs."""

    plan: ChunkPlan
    batches: dict[int, BatchResult] = field(default_factory=dict)
    chunks: list[int] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # run -> the date of its first chunk used

    @property
    def images(self) -> int:
        """How many images' features were reused."""
        return sum(len(ids) for ids, _ in self.batches.values())

    def note(self) -> str:
        """The provenance note: how much was resumed ("" when nothing was)."""
        if not self.chunks:
            return ""
        return (
            f"resumed {self.images:,} of {self.plan.items:,} images ({len(self.chunks)} of {self.plan.count} chunks) "
            "from an interrupted run"
        )

    def as_dict(self) -> dict[str, object] | None:
        """The report's form (None when nothing was reused)."""
        if not self.chunks:
            return None
        return {
            "chunks": len(self.chunks),
            "of_chunks": self.plan.count,
            "images": self.images,
            "of_images": self.plan.items,
            "encoded": self.plan.items - self.images,
            "from": [f"{run}, {date}" for run, date in sorted(self.runs.items())],
        }


def reuse_chunks(
    store: FeatureStore,
    fields: Mapping[str, object],
    plan: ChunkPlan,
    check_for: Callable[[int, int], Check],
    canary: Callable[[], Arrays],
) -> Resumed:
    """Every chunk of the split that checks out (``check_for(start, end)`` and the canary), split back into its batches."""
    resumed = Resumed(plan)
    if not store.reads:
        return resumed
    for chunk in range(plan.count):
        start, end = plan.item_range(chunk)
        arrays, prov = store.lookup(chunk_fields(fields, plan, chunk), check_for(start, end), canary)
        if arrays is None or isinstance(prov, str):
            continue
        ids, feats = arrays["ids"], torch.from_numpy(arrays["features"])
        for batch in plan.batch_range(chunk):
            lo, hi = batch * plan.batch_size - start, min(plan.items, (batch + 1) * plan.batch_size) - start
            resumed.batches[batch] = ([int(i) for i in ids[lo:hi].tolist()], feats[lo:hi])
        resumed.chunks.append(chunk)
        resumed.runs.setdefault(str(prov.run), str(prov.date))
    return resumed


class ChunkWriter:
    """``on_batch`` for the encoder loop: stores each chunk as soon as its last batch is encoded."""

    def __init__(
        self,
        store: FeatureStore,
        fields: Mapping[str, object],
        plan: ChunkPlan,
        desc: str,
        canary: Callable[[], Arrays | None],
    ):
        self.store, self.fields, self.plan, self.desc, self.canary = store, fields, plan, desc, canary
        self.pending: dict[int, dict[int, BatchResult]] = {}
        self.stored = 0

    def __call__(self, batch: int, ids: list[int], feats: torch.Tensor) -> None:
        """Keep batch ``batch``; store its chunk when it is complete."""
        chunk = self.plan.chunk_of(batch)
        parts = self.pending.setdefault(chunk, {})
        parts[batch] = (ids, feats)
        if len(parts) < len(self.plan.batch_range(chunk)):
            return
        del self.pending[chunk]
        ordered = [parts[b] for b in self.plan.batch_range(chunk)]
        arrays = {
            "ids": np.asarray([i for part_ids, _ in ordered for i in part_ids], dtype=np.int64),
            "features": torch.cat([f for _, f in ordered]).numpy(),
        }
        start, end = self.plan.item_range(chunk)
        what = f"{self.desc} chunk {chunk + 1}/{self.plan.count} (items {start}-{end - 1})"
        self.store.save(chunk_fields(self.fields, self.plan, chunk), arrays, what, self.canary)
        self.stored += 1


def drop_chunks(store: FeatureStore, fields: Mapping[str, object], plan: ChunkPlan) -> int:
    """Delete the split's chunks (its own entry now holds them all); how many there were."""
    return sum(store.remove(chunk_fields(fields, plan, chunk)) for chunk in range(plan.count))
