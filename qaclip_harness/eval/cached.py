"""The evaluation's side of the cache: what names a model's features, and the lookups around each encoding step.

Every step that produces features (images, captions, a zero-shot classifier) first looks its key
up; an entry is used only when it checks out (its record, payload digest, arrays and shapes, see
:mod:`qaclip_harness.cache.features`) and this run reproduces its canary
(:mod:`qaclip_harness.eval.canary`); anything else computes the features as without a cache and
stores them with their canary. The key holds the model (checkpoint sha256, card, encoder class,
precision and dtype, device and its numeric flags, backend, compilation), the input (the data's
content digest and split, or the exact texts), the batch size, and the run's environment
(:func:`qaclip_harness.cache.keys.run_environment`: the project's source, library versions, the
CPU's instruction set, torch's numeric settings, the variables that change numerics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from qaclip_harness.cache import Cache, Provenance
from qaclip_harness.cache.features import Arrays
from qaclip_harness.cache.keys import device_kind, foreign_source_digest, make_key, run_environment
from qaclip_harness.cache.pixels import (
    DISCARD_PIXELS,
    DiscardPixels,
    PixelStore,
    PixelWriter,
    decode_definition,
    probe_pixels,
)
from qaclip_harness.cache.space import say
from qaclip_harness.data.fingerprint import images_digest
from qaclip_harness.data.loader import yields_pixels
from qaclip_harness.data.probe_twin import probe_twin
from qaclip_harness.eval.canary import classifier_canary, image_canary, once, text_canary
from qaclip_harness.eval.distributed import Shard, gather_indexed
from qaclip_harness.eval.features import encode_image_dataset, encode_texts
from qaclip_harness.eval.resume import ChunkPlan, ChunkWriter, drop_chunks, reuse_chunks


@dataclass
class CaseCache:
    """The cache as one model's evaluations use it: the stores and the fields that name the model."""

    cache: Cache
    model: dict[str, object]


def model_fields(
    encoder: Any,
    checkpoint_sha256: str | None,
    card: object = None,
    precision: str = "fp32",
    backend: str = "pytorch",
    compile: bool = False,
) -> dict[str, object]:
    """The fields of a cache key that name the model, the machinery that runs it and the run's environment."""
    card_doc = (
        dataclasses.asdict(card) if dataclasses.is_dataclass(card) and not isinstance(card, type) else (card or {})
    )
    fields: dict[str, object] = {
        "checkpoint": checkpoint_sha256,
        "model": getattr(encoder, "name", None),
        "card": hashlib.sha256(json.dumps(card_doc, sort_keys=True, default=str).encode("utf-8")).hexdigest(),
        "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "precision": precision,
        "dtype": str(getattr(encoder, "dtype", None)),  # what the loaded model holds, not only what was asked for
        "device": device_kind(encoder.device),
        "backend": backend,
        "compile": bool(compile),
        **run_environment(),
    }
    foreign = foreign_source_digest(encoder)  # a project's own encoder: its package's source, as ours is above
    if foreign is not None:
        fields["backend_source"] = foreign
    return fields


def text_digest(texts: Sequence[str]) -> str:
    """sha256 of the exact texts, in order."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def gathered_digests(dataset: Any, shard: Shard) -> list:
    """Every item's (key, digest): each rank read its share of the images, so the shares are merged."""
    local = dataset.item_digests()
    if shard.world == 1:
        return local
    merged = {
        k: d for part in gather_indexed(shard, [(shard.rank, dict(local))]) for k, d in part.items() if d is not None
    }
    return [(k, merged.get(k)) for k, _ in local]


def can_identify(dataset: Any) -> bool:
    """Whether the dataset can be hashed before it is decoded (``read_bytes`` and ``source_files``)."""
    return all(hasattr(dataset, n) for n in ("read_bytes", "source_files", "item_digests"))


def identify_images(cc: CaseCache, dataset: Any, kind: str, shard: Shard, batch_size: int, num_workers: int) -> str:
    """The images' content digest before any decoding: from the identity record, else by reading (and hashing) every file."""

    def compute() -> str:
        batches = [list(range(s, min(s + batch_size, len(dataset)))) for s in range(0, len(dataset), batch_size)]
        mine = [i for _, b in shard.mine(batches) for i in b]
        with ThreadPoolExecutor(max(1, num_workers), thread_name_prefix="qaclip-hash") as pool:
            for _ in pool.map(dataset.read_bytes, mine, chunksize=64):  # hashlib and LMDB reads release the GIL
                pass
        return images_digest(gathered_digests(dataset, shard))

    return cc.cache.identity.images_digest(f"{kind}:{type(dataset).__name__}", dataset.source_files(), compute)


def _features_check(rows: int, dim: Callable[[], int], ids: list[int] | None = None) -> Callable[[Arrays], str | None]:
    """What a features entry must hold: a float32 matrix of ``rows`` x ``dim()`` (the canary's width), and these ids."""

    def check(arrays: Arrays) -> str | None:
        feats = arrays.get("features")
        if feats is None or feats.dtype != np.float32 or feats.ndim != 2:
            return "it holds no float32 feature matrix"
        if feats.shape != (rows, dim()):
            return f"its features are {feats.shape[0]} x {feats.shape[1]}, this run's are {rows} x {dim()}"
        if ids is not None:
            got = arrays.get("ids")
            if got is None or got.shape != (rows,) or not np.array_equal(got, np.asarray(ids, dtype=got.dtype)):
                return "its item ids are not this dataset's, in its order"
        return None

    return check


def _item_ids(dataset: Any) -> list[int] | None:
    if not hasattr(dataset, "item_id"):
        return None
    return [int(dataset.item_id(i)) for i in range(len(dataset))]


def image_features(
    cc: CaseCache | None, encoder: Any, dataset: Any, opts: Any, desc: str, data: dict[str, Any] | None = None
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
    pfields, pixel_note = None, "no pixel cache: this preprocessing has no uint8 split point"
    if yields_pixels(dataset):
        if not data.get("build"):
            pixel_note = "no pixel cache: the data build is unknown"
        else:
            pfields = PixelStore.fields(
                str(data["images"]), dataset.transform.output_shape[-1], decode_definition(dataset), None
            )
    # the path a computation here would take: uint8 pixels (cached or being cached) or floats
    pixel_path = pfields is not None and (
        opts.shard.world == 1 or (cc.cache.pixels.folder / make_key(pfields) / "meta.json").is_file()
    )
    if probe_twin(dataset) is None:  # a reader without a probe twin has no canary: nothing is reused or stored
        ids, feats = encode_image_dataset(encoder, dataset, **run)
        note = f"not cached: no canary for the reader {type(dataset).__name__}"
        return ids, feats, Provenance("computed", make_key(fields), note=note)
    canary = once(lambda: image_canary(encoder, dataset, pixel_path, opts.num_workers))
    check = _features_check(len(dataset), lambda: canary()["images"].shape[1], _item_ids(dataset))
    store = cc.cache.features
    arrays, why = store.lookup(fields, check, canary)
    plan = ChunkPlan.of(len(dataset), opts.batch_size, opts.resume_chunk) if opts.shard.world == 1 else None
    if arrays is not None and isinstance(why, Provenance):  # a hit always comes with its provenance
        if plan is not None and store.writes:
            drop_chunks(store, fields, plan)  # left by a run killed between storing the entry and dropping them
        return [int(i) for i in arrays["ids"].tolist()], torch.from_numpy(arrays["features"]), why.of(arrays)
    resumed, on_batch = None, None
    if plan is not None:
        item_ids = _item_ids(dataset)
        dim = lambda: canary()["images"].shape[1]  # noqa: E731 -- read only for a chunk that passed its record checks
        resumed = reuse_chunks(
            store,
            fields,
            plan,
            lambda s, e: _features_check(e - s, dim, None if item_ids is None else item_ids[s:e]),
            canary,
        )
        if store.writes:
            on_batch = ChunkWriter(store, fields, plan, desc, canary)
    done = resumed.batches if resumed is not None else {}
    pixels = None
    writer: PixelWriter | DiscardPixels | None = None
    if pfields is not None:
        item_keys = [k for k, _ in dataset.item_digests()]
        pixel_canary = once(lambda: probe_pixels(dataset, opts.num_workers))
        pixels = cc.cache.pixels.open(pfields, item_keys, pixel_canary)
        if pixels is not None:
            pixel_note = "pixels read from the pixel cache"
        elif done:  # only the missing chunks are decoded: not a whole entry, but the same uint8 path as the first run
            writer = DISCARD_PIXELS
            pixel_note = "pixels decoded (a resumed run does not write the pixel cache)"
        elif opts.shard.world == 1:
            writer = cc.cache.pixels.writer(
                pfields, item_keys, desc, pixel_canary() if cc.cache.pixels.writes else None
            )
            pixel_note = "pixels decoded" + (" and stored in the pixel cache" if writer else "")
        else:
            pixel_note = "pixels decoded (a sharded run does not write the pixel cache)"
    try:
        ids, feats = encode_image_dataset(
            encoder, dataset, pixels=pixels, pixel_writer=writer, done=done, on_batch=on_batch, **run
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None and writer is not DISCARD_PIXELS and writer.commit() is None:
        pixel_note = "pixels decoded; the pixel cache was not stored"
    if pixels is not None and pixels.damaged:
        say(
            f"pixel cache {pixels.folder}: {len(pixels.damaged)} images' pixels do not match their digest "
            f"(e.g. item {pixels.damaged[0]}); decoded instead"
            + ("; the entry is removed and the next run rebuilds it" if cc.cache.pixels.writes else "")
        )
        if cc.cache.pixels.writes:
            cc.cache.pixels.remove(pixels.folder)
        pixel_note = f"pixels read from the pixel cache, {len(pixels.damaged)} damaged ones decoded"
    arrays = {"ids": np.asarray(ids, dtype=np.int64), "features": feats.numpy()}
    prov = _save(cc, fields, arrays, desc, opts.shard, canary, why).of(arrays)
    if plan is not None and store.writes and store.paths(make_key(fields))[0].is_file():
        drop_chunks(store, fields, plan)  # the split's entry holds them all now
    if resumed is not None:
        prov.resumed = resumed.as_dict()
    prov.note = "; ".join(p for p in (resumed and resumed.note(), pixel_note, prov.note) if p)
    return ids, feats, prov


def text_features(
    cc: CaseCache | None, encoder: Any, texts: Sequence[str], opts: Any, desc: str
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
    canary = once(lambda: text_canary(encoder))
    arrays, why = cc.cache.features.lookup(
        fields, _features_check(len(texts), lambda: canary()["texts"].shape[1]), canary
    )
    if arrays is not None and isinstance(why, Provenance):  # a hit always comes with its provenance
        return torch.from_numpy(arrays["features"]), why.of(arrays)
    feats = encode_texts(encoder, texts, **run)
    computed = {"features": feats.numpy()}
    return feats, _save(cc, fields, computed, desc, opts.shard, canary, why).of(computed)


def classifier(
    cc: CaseCache | None, encoder: Any, classnames: Sequence[str], templates: Sequence[Any], opts: Any, desc: str
) -> tuple[torch.Tensor, Provenance | None]:
    """The zero-shot classifier (:func:`qaclip_harness.eval.zeroshot.cached_classifier`) through the feature cache."""
    from qaclip_harness.eval.zeroshot import cached_classifier

    def build() -> torch.Tensor:
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
    canary = once(lambda: classifier_canary(encoder, templates))
    check = _classifier_check(len(classnames), lambda: canary()["classifier"].shape[0])
    arrays, why = cc.cache.features.lookup(fields, check, canary)
    if arrays is not None and isinstance(why, Provenance):  # a hit always comes with its provenance
        return torch.from_numpy(arrays["features"]), why.of(arrays)
    weights = build()
    computed = {"features": weights.numpy()}
    return weights, _save(cc, fields, computed, desc, opts.shard, canary, why).of(computed)


def _classifier_check(classes: int, dim: Callable[[], int]) -> Callable[[Arrays], str | None]:
    """A classifier entry: a float32 [D, C] matrix, D the canary's, one column per class."""

    def check(arrays: Arrays) -> str | None:
        feats = arrays.get("features")
        if feats is None or feats.dtype != np.float32 or feats.ndim != 2:
            return "it holds no float32 classifier matrix"
        if feats.shape != (dim(), classes):
            return f"its classifier is {feats.shape[0]} x {feats.shape[1]}, this run's is {dim()} x {classes}"
        return None

    return check


def _save(
    cc: CaseCache,
    fields: dict,
    arrays: Arrays,
    what: str,
    shard: Shard,
    canary: Callable[[], Arrays | None],
    note: object = "",
) -> Provenance:
    """Store a computed result with its canary (rank 0 only: every rank holds the same gathered tensors)."""
    why = note if isinstance(note, str) else ""
    if not shard.is_main:
        return Provenance("computed", make_key(fields), note="; ".join(p for p in (why, "stored by rank 0") if p))
    return cc.cache.features.save(fields, arrays, what, canary, why)
