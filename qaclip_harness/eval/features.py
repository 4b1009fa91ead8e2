"""Batched feature extraction with progress, memory-bounded batches and out-of-memory fallback."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from qaclip_harness.data.loader import ImageBatchLoader
from qaclip_harness.eval.distributed import SINGLE, Shard, gather_indexed
from qaclip_harness.progress import Progress, track
from qaclip_harness.tensors import normalise

log = logging.getLogger(__name__)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _run_halving(
    fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, state: dict, what: str
) -> torch.Tensor:
    """Run ``fn`` on ``batch`` in chunks of ``state['size']``, halving the size on out-of-memory."""
    outs: list[torch.Tensor] = []
    start = 0
    while start < len(batch):
        size = state["size"]
        try:
            outs.append(fn(batch[start : start + size]).float())
            start += size
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not _is_oom(err) or size == 1:
                raise
            state["size"] = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            msg = f"out of memory encoding {what} at batch size {size}; retrying with {state['size']}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
    return torch.cat(outs) if outs else torch.empty(0)


def encode_image_dataset(
    encoder,
    dataset: Any,  # a map-style Dataset: __len__, items; with a pixel cache, .transform
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Progress = True,
    desc: str = "images",
    shard: Shard = SINGLE,
    pixels: Any = None,
    pixel_writer=None,
    done: Mapping[int, tuple[list[int], torch.Tensor]] | None = None,
    on_batch: Callable[[int, list[int], torch.Tensor], None] | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Encode every ``(id, image tensor)`` item of ``dataset`` in order; returns ids and normalised fp32 features.

    ``num_workers`` threads decode images (see :mod:`qaclip_harness.data.loader`). Under torchrun
    each rank encodes its share of the batches and all ranks receive everything. With a pixel
    cache (``pixels``, a complete cached array, or ``pixel_writer``, one being built) batches
    travel as uint8 and become floats on the encoder's device (on the GPU where there is one).
    ``done``: the ids and features of batches known already (resumed chunks), neither read nor
    encoded; ``on_batch(index, ids, features)`` sees each batch encoded here.
    """
    cuda = encoder.device.type == "cuda"
    batches = [
        list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)
    ]
    done = done or {}
    if done and shard.world > 1:
        raise ValueError("resumed batches need a single-process run: each rank holds only its share")
    mine = [(index, b) for index, b in shard.mine(batches) if index not in done]
    loader = ImageBatchLoader(
        dataset,
        [b for _, b in mine],
        num_workers=num_workers,
        pin_memory=cuda,
        pixels=pixels,
        pixel_writer=pixel_writer,
    )
    encode = encoder.encode_image
    if pixels is not None or pixel_writer is not None:
        from_pixels, where = dataset.transform.from_pixels, encoder.device if cuda else torch.device("cpu")

        def encode(batch: torch.Tensor) -> torch.Tensor:
            return encoder.encode_image(from_pixels(batch.to(where, non_blocking=True)))

    state = {"size": batch_size}
    local = []
    total = sum(len(b) for _, b in mine)
    shown = track(loader, progress, f"encode {desc}", total, "images", size=lambda batch: len(batch[0]))
    # the tracked loader first: zip then draws from it once more at the end, so the last batch is counted
    for (batch_ids, images), (index, _) in zip(shown, mine):
        batch = [int(i) for i in batch_ids], normalise(_run_halving(encode, images, state, desc)).cpu()
        local.append((index, batch))
        if on_batch is not None:
            on_batch(index, *batch)
    local.extend(done.items())  # merged in batch order below
    parts = gather_indexed(shard, local)
    ids = [i for part_ids, _ in parts for i in part_ids]
    feats = torch.cat([f for _, f in parts]) if parts else torch.empty(0)
    return ids, feats


def encode_texts(
    encoder,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: Progress = True,
    desc: str = "texts",
    shard: Shard = SINGLE,
) -> torch.Tensor:
    """Encode raw texts; returns normalised fp32 features in input order.

    Texts are batched by token length so that removing padding removes most of it; a text's
    features do not depend on its batch (padding is masked), so the order is free.
    """
    if not texts:
        return torch.empty(0)
    tokens = encoder.tokenize(list(texts))
    lengths = (tokens != getattr(encoder, "pad_id", 0)).sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    state = {"size": batch_size}
    local = []
    mine = shard.mine(chunks)
    for index, idx in track(
        mine, progress, f"encode {desc}", sum(len(c) for _, c in mine), "texts", size=lambda c: len(c[1])
    ):
        local.append((index, normalise(_run_halving(encoder.encode_text, tokens[idx], state, desc)).cpu()))
    feats = gather_indexed(shard, local)
    out = torch.empty(len(texts), feats[0].shape[1])
    out[order] = torch.cat(feats)
    return out
