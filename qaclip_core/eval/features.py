"""Batched feature extraction with progress, memory-bounded batches and out-of-memory fallback."""
from __future__ import annotations

import logging
import warnings
from typing import Callable, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _run_halving(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, state: dict, what: str) -> torch.Tensor:
    """Run ``fn`` on ``batch`` in chunks of ``state['size']``, halving the size on out-of-memory."""
    outs: List[torch.Tensor] = []
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


def normalise(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of ``x`` in fp32."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def _collate(batch):
    ids, images = zip(*batch)
    return list(ids), torch.stack(images)


def encode_image_dataset(
    encoder,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "images",
) -> Tuple[List[int], torch.Tensor]:
    """Encode every ``(id, image tensor)`` item of ``dataset`` in order; returns ids and normalised fp32 features."""
    cuda = encoder.device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        collate_fn=_collate,
        persistent_workers=False,
    )
    state = {"size": batch_size}
    ids: List[int] = []
    feats: List[torch.Tensor] = []
    for batch_ids, images in tqdm(loader, desc=f"encode {desc}", unit="batch", disable=not progress):
        out = _run_halving(encoder.encode_image, images, state, desc)
        ids.extend(int(i) for i in batch_ids)
        feats.append(normalise(out).cpu())
    return ids, torch.cat(feats) if feats else torch.empty(0)


def encode_texts(
    encoder,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "texts",
) -> torch.Tensor:
    """Encode raw texts; returns normalised fp32 features in input order.

    Texts are batched by token length so that trimming the padding removes most of it; each
    text's features do not depend on its batch (padding is masked), so the order is free.
    """
    if not texts:
        return torch.empty(0)
    tokens = encoder.tokenize(list(texts))
    lengths = (tokens != 0).sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    state = {"size": batch_size}
    out = torch.empty(0)
    chunks: List[torch.Tensor] = []
    for start in tqdm(range(0, len(order), batch_size), desc=f"encode {desc}", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        chunks.append(normalise(_run_halving(encoder.encode_text, tokens[idx], state, desc)).cpu())
    out = torch.empty(len(texts), chunks[0].shape[1])
    out[order] = torch.cat(chunks)
    return out
