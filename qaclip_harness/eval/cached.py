"""The evaluation's side of the cache: what names a model's features, and the lookups around each encoding step.

Every step that produces features (images, captions, a zero-shot classifier) first looks its key
up; a hit returns the stored tensors with where they came from, a miss computes them as without
a cache and stores them. The key holds the model (checkpoint sha256, card, precision, device
kind, backend, compilation), the input (the data's content digest and split, or the exact texts),
the batch size, library versions, numeric settings, and the digest of the source of every module
on the feature path (:data:`qaclip_harness.cache.keys.FEATURE_PATH`): a change to any of them
misses, a change to the metrics, a gate, a tolerance or the report hits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from qaclip_harness.cache import Cache, Provenance
from qaclip_harness.cache.keys import (
    device_kind,
    feature_path_digest,
    library_versions,
    make_key,
    module_digest,
    numeric_settings,
)
from qaclip_harness.cache.pixels import PixelStore
from qaclip_harness.data.fingerprint import images_digest
from qaclip_harness.data.loader import yields_pixels
from qaclip_harness.eval.distributed import Shard, gather_indexed
from qaclip_harness.eval.features import encode_image_dataset, encode_texts


@dataclass
class CaseCache:
    """The cache as one model's evaluations use it: the stores and the fields that name the model."""

    cache: Cache
    model: dict[str, object]


def model_fields(
    encoder,
    checkpoint_sha256: str | None,
    card: object = None,
    precision: str = "fp32",
    backend: str = "pytorch",
    compile: bool = False,
) -> dict[str, object]:
    """The fields of a cache key that name the model and the machinery that runs it."""
    card_doc = (
        dataclasses.asdict(card) if dataclasses.is_dataclass(card) and not isinstance(card, type) else (card or {})
    )
    return {
        "checkpoint": checkpoint_sha256,
        "model": getattr(encoder, "name", None),
        "card": hashlib.sha256(json.dumps(card_doc, sort_keys=True, default=str).encode("utf-8")).hexdigest(),
        "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "precision": precision,
        "device": device_kind(encoder.device),
        "backend": backend,
        "compile": bool(compile),
        "versions": library_versions(),
        "numerics": numeric_settings(),
        "source": feature_path_digest(),
    }


def text_digest(texts: Sequence[str]) -> str:
    """sha256 of the exact texts, in order."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def gathered_digests(dataset, shard: Shard) -> list:
    """Every item's (key, digest): each rank read its share of the images, so the shares are merged."""
    local = dataset.item_digests()
    if shard.world == 1:
        return local
    merged = {
        k: d for part in gather_indexed(shard, [(shard.rank, dict(local))]) for k, d in part.items() if d is not None
    }
    return [(k, merged.get(k)) for k, _ in local]


def can_identify(dataset) -> bool:
    """Whether the dataset can be hashed before it is decoded (``read_bytes`` and ``source_files``)."""
    return all(hasattr(dataset, n) for n in ("read_bytes", "source_files", "item_digests"))


def identify_images(cc: CaseCache, dataset, kind: str, shard: Shard, batch_size: int, num_workers: int) -> str:
    """The images' content digest before any decoding: from the identity record, else by reading (and hashing) every file."""

    def compute() -> str:
        batches = [list(range(s, min(s + batch_size, len(dataset)))) for s in range(0, len(dataset), batch_size)]
        mine = [i for _, b in shard.mine(batches) for i in b]
        with ThreadPoolExecutor(max(1, num_workers), thread_name_prefix="qaclip-hash") as pool:
            for _ in pool.map(dataset.read_bytes, mine, chunksize=64):  # hashlib and LMDB reads release the GIL
                pass
        return images_digest(gathered_digests(dataset, shard))

    return cc.cache.identity.images_digest(f"{kind}:{type(dataset).__name__}", dataset.source_files(), compute)


def pixel_definition(dataset) -> dict[str, object]:
    """How a dataset's images become its pixels: the reader, the transform, and the source of both."""
    transform = dataset.transform
    reader, steps = sys.modules[type(dataset).__module__], sys.modules[type(transform).__module__]
    return {
        "reader": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "transform": repr(transform),
        "source": module_digest(reader, steps),
        "torchvision": library_versions()["torchvision"],
    }


def image_features(
    cc: CaseCache | None, encoder, dataset, opts, desc: str, data: dict[str, Any] | None = None
) -> tuple[list[int], torch.Tensor, Provenance | None]:
    """``encode_image_dataset`` through the feature cache and, for a known data build, the pixel cache.

    ``data``: ``{"images": content digest, "split": ..., "build": named build or None}``.
    """
    run = {
        "batch_size": opts.batch_size,
        "num_workers": opts.num_workers,
        "progress": opts.progress,
        "desc": desc,
        "shard": opts.shard,
    }
    if cc is None or data is None:
        ids, feats = encode_image_dataset(encoder, dataset, **run)
        return ids, feats, None
    fields = {
        **cc.model,
        "what": "image features",
        "data": data["images"],
        "split": data["split"],
        "batch_size": opts.batch_size,
    }
    hit = cc.cache.features.lookup(fields)
    if hit is not None:
        payload, prov = hit
        return [int(i) for i in payload["ids"].tolist()], payload["features"], prov
    pixels, writer, pixel_note = None, None, "no pixel cache: this preprocessing has no uint8 split point"
    if yields_pixels(dataset):
        if not data.get("build"):
            pixel_note = "no pixel cache: the data build is unknown"
        else:
            item_keys = [k for k, _ in dataset.item_digests()]
            pfields = PixelStore.fields(
                data["images"],
                dataset.transform.output_shape[-1],
                pixel_definition(dataset),
                library_versions()["Pillow"],
            )
            pixels = cc.cache.pixels.open(pfields, item_keys)
            if pixels is not None:
                pixel_note = "pixels read from the pixel cache"
            elif opts.shard.world == 1:
                writer = cc.cache.pixels.writer(pfields, item_keys, desc)
                pixel_note = "pixels decoded" + (" and stored in the pixel cache" if writer else "")
            else:
                pixel_note = "pixels decoded (a sharded run does not write the pixel cache)"
    try:
        ids, feats = encode_image_dataset(encoder, dataset, pixels=pixels, pixel_writer=writer, **run)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None and writer.commit() is None:
        pixel_note = "pixels decoded; the pixel cache was not stored"
    prov = _save(cc, fields, {"ids": torch.tensor(ids, dtype=torch.long), "features": feats}, desc, opts.shard)
    prov.note = "; ".join(p for p in (pixel_note, prov.note) if p)
    return ids, feats, prov


def text_features(
    cc: CaseCache | None, encoder, texts: Sequence[str], opts, desc: str
) -> tuple[torch.Tensor, Provenance | None]:
    """``encode_texts`` through the feature cache."""
    run = {"batch_size": opts.text_batch_size, "progress": opts.progress, "desc": desc, "shard": opts.shard}
    if cc is None:
        return encode_texts(encoder, texts, **run), None
    fields = {
        **cc.model,
        "what": "text features",
        "texts": text_digest(texts),
        "count": len(texts),
        "batch_size": opts.text_batch_size,
    }
    hit = cc.cache.features.lookup(fields)
    if hit is not None:
        return hit[0]["features"], hit[1]
    feats = encode_texts(encoder, texts, **run)
    return feats, _save(cc, fields, {"features": feats}, desc, opts.shard)


def classifier(
    cc: CaseCache | None, encoder, classnames: Sequence[str], templates: Sequence[str], opts, desc: str
) -> tuple[torch.Tensor, Provenance | None]:
    """The zero-shot classifier (:func:`qaclip_harness.eval.zeroshot.cached_classifier`) through the feature cache."""
    from qaclip_harness.eval.zeroshot import cached_classifier

    def build():
        return cached_classifier(
            encoder,
            classnames,
            templates,
            opts.text_batch_size,
            opts.progress,
            opts.shard,
            desc=desc,
        )

    if cc is None:
        return build(), None
    prompts = hashlib.sha256(
        json.dumps([list(classnames), [str(t) for t in templates]], ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    fields = {**cc.model, "what": "zero-shot classifier", "prompts": prompts, "batch_size": opts.text_batch_size}
    hit = cc.cache.features.lookup(fields)
    if hit is not None:
        return hit[0]["features"], hit[1]
    weights = build()
    return weights, _save(cc, fields, {"features": weights}, desc, opts.shard)


def _save(cc: CaseCache, fields: dict, payload: dict, what: str, shard: Shard) -> Provenance:
    """Store a computed result (rank 0 only: every rank holds the same gathered tensors)."""
    if not shard.is_main:
        return Provenance("computed", make_key(fields), note="stored by rank 0")
    return cc.cache.features.save(fields, payload, what)
