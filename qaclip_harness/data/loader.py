"""Batches of preprocessed images, decoded by a pool of threads straight into each batch's buffer.

Why threads and not ``DataLoader`` worker processes: PIL decodes and resizes with the GIL
released, so threads decode in parallel; and a thread writes its image into its slot of the
batch, where a process has to send a float tensor through shared memory to the main process.
On two cores the process design was about a fifth slower (the loader benchmark in
``benchmarks/test_throughput_pipeline.py`` times both).

Datasets with ``load_image(i)``, ``item_id(i)`` and a ``transform`` that has ``into`` (see
:class:`qaclip_core.transforms.ClipImageTransform`) take that path; any other dataset of
``(id, tensor)`` items is read with ``dataset[i]`` in the same threads and stacked.

With a pixel cache (:mod:`qaclip_harness.cache.pixels`) batches are ``uint8`` ``[N, R, R, 3]``
instead, the transform's :meth:`pixels` of each image: copied from the cached array, or decoded
and kept in the array being built. The encoder's batch turns them into floats (``from_pixels``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

Batch = tuple[list[int], torch.Tensor]
# Decode threads yield the CPU to the model's threads: a CPU model runs its layers on a team of
# threads that waits for its slowest member, so a decode thread preempting one of them stalls
# the whole team. With the fixture model on two cores this took LMDB-to-features from about
# 560 to about 760 images/s; decoding alone is as fast as before.
DECODE_NICENESS = 10


def _lower_priority() -> None:
    """Thread initializer: raise this thread's niceness (Linux schedules threads by their own)."""
    if sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICENESS))
        except OSError:  # not permitted in some sandboxes: decoding works the same, only slower alongside a CPU model
            pass


def resolve_workers(value: Any, processes: int = 1) -> int:
    """``"auto"`` (or ``None``) -> one decode thread per usable core, at most 8; else the integer given.

    ``processes`` evaluating side by side on this machine (pytest-xdist workers, torchrun ranks
    of a node) share the cores, so ``auto`` gives each its part.
    """
    if value is None or str(value).strip().lower() == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(8, cores // max(1, processes)))
    try:
        workers = int(value)
    except ValueError:
        raise ValueError(f"number of decode workers must be 'auto' or an integer >= 0, got {value!r}") from None
    if workers < 0:
        raise ValueError(f"number of decode workers must be 'auto' or an integer >= 0, got {value!r}")
    return workers


def writes_into_slots(dataset: Any) -> bool:
    """Whether ``dataset`` can decode item ``i`` straight into a batch slot."""
    transform = getattr(dataset, "transform", None)
    return all(hasattr(dataset, n) for n in ("load_image", "item_id")) and all(
        hasattr(transform, n) for n in ("into", "output_shape")
    )


def yields_pixels(dataset: Any) -> bool:
    """Whether ``dataset``'s transform splits at the resized uint8 image (``pixels`` and ``from_pixels``): a pixel cache fits it."""
    transform = getattr(dataset, "transform", None)
    return writes_into_slots(dataset) and all(hasattr(transform, n) for n in ("pixels", "from_pixels"))


class _Pending:
    """One batch being decoded: its ids, its buffer (slot path) and one future per chunk of images."""

    def __init__(self, ids: list[int], buffer: torch.Tensor | None, jobs: list[Callable[[], list]], submit: Callable):
        self.ids = ids
        self.buffer = buffer
        self.futures: list[Future] = [submit(job) for job in jobs]

    def result(self, pin_memory: bool) -> Batch:
        items = [item for f in self.futures for item in f.result()]  # re-raises a worker's error, which names the item
        if self.buffer is not None:
            return self.ids, self.buffer
        ids, images = zip(*items)
        stacked = torch.stack(images)
        return [int(i) for i in ids], stacked.pin_memory() if pin_memory else stacked


class _Inline:
    """A stand-in executor for ``num_workers=0``: runs each job when it is submitted."""

    def submit(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        try:
            future.set_result(job())
        except BaseException as e:  # noqa: BLE001 -- delivered by result(), as a thread pool would
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""


class ImageBatchLoader:
    """Iterate ``(ids, images)`` over ``batches`` (lists of dataset indices), in order.

    ``num_workers`` threads decode; ``0`` decodes in the calling thread when a batch is due.
    Up to ``prefetch`` batches are decoded ahead of the one being consumed, so decoding
    overlaps the model. ``pin_memory`` puts batches in page-locked memory for non-blocking
    copies to a GPU.
    """

    def __init__(
        self,
        dataset: Any,
        batches: Sequence[Sequence[int]],
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch: int = 2,
        pixels: Any = None,
        pixel_writer: Any = None,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batches = [list(b) for b in batches]
        if any(not b for b in self.batches):
            raise ValueError(
                f"batch {next(k for k, b in enumerate(self.batches) if not b)} is empty; every batch needs an index"
            )
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch = max(1, prefetch) if num_workers else 0
        self.into_slots = writes_into_slots(dataset)
        # a complete cached array to copy from (an array, or a checked entry whose damaged rows are
        # decoded instead), or a writer (``put(i, pixels)``) of one being built
        self.pixels = pixels
        self.pixel_writer = pixel_writer
        if (pixels is not None or pixel_writer is not None) and not yields_pixels(dataset):
            raise ValueError("a pixel cache needs a dataset whose transform has pixels() and from_pixels()")

    def __len__(self) -> int:
        return len(self.batches)

    def _start(self, indices: list[int], submit: Callable) -> _Pending:
        ds = self.dataset
        # one job per worker and batch: fewer hand-offs than one per image, and the batches
        # prefetched behind it keep every worker busy when one chunk is slower
        size = -(-len(indices) // max(1, self.num_workers))
        slots = list(enumerate(indices))
        chunks = [slots[start : start + size] for start in range(0, len(slots), size)]
        if not self.into_slots:

            def items(chunk: list[tuple[int, int]]) -> list:
                return [ds[i] for _, i in chunk]

            return _Pending([], None, [partial(items, c) for c in chunks], submit)
        if self.pixels is not None or self.pixel_writer is not None:
            buffer, jobs = self._pixel_jobs(indices, chunks)
            return _Pending([int(ds.item_id(i)) for i in indices], buffer, jobs, submit)
        buffer = torch.empty(
            (len(indices), *ds.transform.output_shape), dtype=torch.float32, pin_memory=self.pin_memory
        )

        def fill(chunk: list[tuple[int, int]]) -> list:
            for slot, i in chunk:
                ds.transform.into(ds.load_image(i), buffer[slot])
            return []

        return _Pending([int(ds.item_id(i)) for i in indices], buffer, [partial(fill, c) for c in chunks], submit)

    def _pixel_jobs(
        self, indices: list[int], chunks: list[list[tuple[int, int]]]
    ) -> tuple[torch.Tensor, list[Callable[[], list]]]:
        """A uint8 batch buffer and the jobs that fill it: copies from the cached array, or decodes kept in the new one."""
        ds, cached, writer = self.dataset, self.pixels, self.pixel_writer
        _, height, width = ds.transform.output_shape
        buffer = torch.empty((len(indices), height, width, 3), dtype=torch.uint8, pin_memory=self.pin_memory)
        out = buffer.numpy()

        def fill(chunk: list[tuple[int, int]]) -> list:
            if cached is None:
                for slot, i in chunk:
                    out[slot] = ds.transform.pixels(ds.load_image(i))
                    writer.put(i, out[slot])
                return []
            s0, i0 = chunk[0]
            # consecutive items: one copy; a checked entry (cache.pixels.CachedPixels) names the rows
            # whose digest is wrong, and those are decoded instead
            runs = [chunk] if all(i - i0 == slot - s0 for slot, i in chunk) else [[c] for c in chunk]
            for run in runs:
                (first_slot, first), n = run[0], len(run)
                if hasattr(cached, "copy_into"):
                    for i in cached.copy_into(out[first_slot : first_slot + n], first):
                        out[first_slot + i - first] = ds.transform.pixels(ds.load_image(i))
                else:
                    np.copyto(out[first_slot : first_slot + n], cached[first : first + n])
            return []

        return buffer, [partial(fill, c) for c in chunks]

    def __iter__(self) -> Iterator[Batch]:
        pool = (
            ThreadPoolExecutor(self.num_workers, thread_name_prefix="qaclip-decode", initializer=_lower_priority)
            if self.num_workers
            else _Inline()
        )
        pending: deque[_Pending] = deque()
        upcoming = iter(self.batches)
        try:
            while True:
                while len(pending) <= self.prefetch:
                    indices = next(upcoming, None)
                    if indices is None:
                        break
                    pending.append(self._start(indices, pool.submit))
                if not pending:
                    return
                yield pending.popleft().result(self.pin_memory)
        finally:
            # on an error or an abandoned iteration, drop queued work and let running jobs end
            # before their buffers are released
            pool.shutdown(wait=True, cancel_futures=True)
