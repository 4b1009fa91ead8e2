"""One evaluation end to end: a dataset on disk + an encoder -> metrics (the suite and the CLI share it).

The data must already be resolved (:func:`qaclip_harness.fetch.datasets.resolve_dataset` fetches
it, :func:`qaclip_harness.data.catalog.locate` finds it): evaluation reads folders and never downloads.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qaclip_core.pretrained import sha256_file
from qaclip_harness.data.catalog import DatasetCard, DatasetOnDisk, identify_build, read_origin
from qaclip_harness.data.fingerprint import combine, images_digest, labels_digest, texts_digest
from qaclip_harness.data.splits import SplitMismatchError, check_split
from qaclip_harness.eval.cached import (
    CaseCache,
    can_identify,
    classifier,
    gathered_digests,
    identify_images,
    image_features,
    text_features,
)
from qaclip_harness.eval.distributed import SINGLE, Shard
from qaclip_harness.eval.resume import DEFAULT_CHUNK_IMAGES
from qaclip_harness.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    """Metrics (percent), item counts, timings, and the raw result for predictions."""

    dataset: str
    model: str
    metrics: dict[str, float]
    counts: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # data fingerprint, split check, build...
    raw: object = None


@dataclass(frozen=True)
class EvalOptions:
    """How to run an evaluation (the same for every dataset kind)."""

    batch_size: int = 64
    text_batch_size: int = 256
    num_workers: int = 0
    progress: Progress = True  # True: tqdm bars; a factory (qaclip_harness.progress); False: none
    split: str | None = None
    shard: Shard = SINGLE
    # data whose size is not the published split's: "strict" stops before encoding, "warn" warns
    # and marks the result not comparable
    split_policy: str = "warn"
    # the feature and pixel caches with the fields naming the model (qaclip_harness.eval.cached); None: no cache
    cache: CaseCache | None = None
    # images per resumable chunk of a split's features (qaclip_harness.eval.resume); 0: none
    resume_chunk: int = DEFAULT_CHUNK_IMAGES


def _split_check(card: DatasetCard, split: str, found: dict[str, int], opts: EvalOptions) -> dict | None:
    """Compare the counts with the published split before any encoding; strict raises, warn warns."""
    if split != card.split:
        return None  # another split was asked for: nothing is published for it
    check = check_split(card.display, split, card.split_size, found)
    if check is None:
        return None
    if not check.ok:
        if opts.split_policy == "strict":
            raise SplitMismatchError(
                check.describe() + "; to evaluate it anyway (the result is then marked not comparable), "
                "pass --evaluate-any-split",
                check,
            )
        msg = check.describe() + ": the numbers are not comparable with the published ones"
        warnings.warn(msg, UserWarning, stacklevel=3)
        log.warning(msg)
    return check.as_dict()


def _data_provenance(
    card: DatasetCard,
    folder: Path,
    split: str,
    kind: str,
    parts: dict[str, str],
    counts: dict[str, int],
    check: dict | None,
    **extra,
) -> dict[str, object]:
    """What identifies the data behind a number: fingerprint, counts, split check, named build."""
    fingerprint = combine(kind, parts)
    return {
        "dataset": card.name,
        "split": split,
        "folder": str(folder),
        "data_fingerprint": fingerprint,
        "fingerprint_parts": parts,
        "counts": counts,
        "split_check": check,
        "comparable": check is None or bool(check["ok"]),
        "build": identify_build(card, folder, fingerprint),
        "origin": read_origin(folder),
        **extra,
    }


def _gathered_digests(dataset, shard: Shard) -> list:
    """Every item's (key, digest), merged over the ranks (:func:`qaclip_harness.eval.cached.gathered_digests`)."""
    return gathered_digests(dataset, shard)


def _identify(
    card: DatasetCard, folder: Path, kind: str, images, parts: dict[str, str], opts: EvalOptions
) -> dict | None:
    """With a cache: the images' digest, the fingerprint and the build, known before any decoding (what the keys need)."""
    if opts.cache is None or not opts.cache.cache.enabled or not can_identify(images):
        return None
    digest = identify_images(opts.cache, images, kind, opts.shard, opts.batch_size, opts.num_workers)
    build = identify_build(card, folder, combine(kind, {**parts, "images": digest}))
    return {"images": digest, "build": build}


def _features_provenance(**steps) -> dict[str, object]:
    """Per step (images, texts, classifier): computed here or reused from which run, date and key."""
    return {name: prov.as_dict() for name, prov in steps.items() if prov is not None}


def evaluate_retrieval_card(encoder, data: DatasetOnDisk, opts: EvalOptions) -> EvalOutput:
    """Text-to-image and image-to-text recall of ``encoder`` on a Chinese-CLIP-format dataset."""
    from qaclip_harness.data.retrieval import load_retrieval_split
    from qaclip_harness.metrics.retrieval import evaluate_retrieval

    card, folder = data.card, data.folder
    split = opts.split or card.split
    split_data = load_retrieval_split(data.datasets_folder, card.dirname, split, transform=encoder.preprocess)
    counts = {"images": len(split_data.images), "texts": len(split_data.texts)}
    check = _split_check(card, split, counts, opts)  # before any image is decoded
    parts = {"texts": texts_digest((t.text_id, t.text, t.image_ids) for t in split_data.texts)}
    known = _identify(card, data.folder, "retrieval", split_data.images, parts, opts)
    t0 = time.perf_counter()
    image_ids, image_feats, image_prov = image_features(
        opts.cache, encoder, split_data.images, opts, f"{card.name} images", known and {**known, "split": split}
    )
    t1 = time.perf_counter()
    text_ids = [t.text_id for t in split_data.texts]
    text_feats, text_prov = text_features(
        opts.cache, encoder, [t.text for t in split_data.texts], opts, f"{card.name} texts"
    )
    t2 = time.perf_counter()
    result = evaluate_retrieval(image_ids, image_feats, text_ids, text_feats, split_data.text_to_images, k=10)
    t3 = time.perf_counter()
    parts = {
        "images": known["images"] if known else images_digest(_gathered_digests(split_data.images, opts.shard)),
        "texts": parts["texts"],
    }  # in the report's order
    reuse = _features_provenance(images=image_prov, texts=text_prov)
    return EvalOutput(
        dataset=card.name,
        model=encoder.name,
        metrics=dict(result.metrics),
        counts=counts,
        seconds={"images": t1 - t0, "texts": t2 - t1, "ranking": t3 - t2},
        diagnostics={"near_ties": result.near_ties},
        provenance=_data_provenance(
            card,
            folder,
            split,
            "retrieval",
            parts,
            counts,
            check,
            batch_size=opts.batch_size,
            i2t_queries=result.counts.get("num_i2t_queries"),
            **({"features": reuse} if reuse else {}),
        ),
        raw=result,
    )


def _zeroshot_folder(card: DatasetCard, folder: Path, transform, classnames, labels_path: Path):
    """The split's images (``folder``) as an ``ImageFolder``: ELEVATER layout checked, or an ImageNet-style folder."""
    if card.layout == "elevater":
        from qaclip_harness.data.elevater import ElevaterFolder

        # the published class count is checked with the split's other sizes (_split_check)
        return ElevaterFolder(folder, labels_path, len(classnames), transform=transform, display=card.display)
    from qaclip_harness.data.imagenet import ImageNetFolder

    return ImageNetFolder(folder, transform=transform, num_labels=len(classnames), labels_path=labels_path)


def evaluate_zeroshot_card(encoder, data: DatasetOnDisk, opts: EvalOptions) -> EvalOutput:
    """Zero-shot top-1/top-5 of ``encoder`` on class folders with Chinese labels (ImageNet, ELEVATER, fixture).

    The prompt templates follow the reference's rule, by the dataset's folder name
    (:mod:`qaclip_harness.data.prompts`).
    """
    from qaclip_harness.data.imagenet import IndexedImages, read_labels
    from qaclip_harness.data.prompts import dataset_templates
    from qaclip_harness.eval.zeroshot import param_counts
    from qaclip_harness.metrics.accuracy import accuracy, true_class_probability

    card, labels_path = data.card, data.labels
    assert labels_path is not None  # locate() gives a zero-shot dataset its label file
    classnames = read_labels(labels_path, expected_sha256=(card.labels or {}).get("sha256"))
    split = opts.split or card.split
    folder = _zeroshot_folder(card, data.folder / split, encoder.preprocess, classnames, labels_path)
    counts = {"images": len(folder.samples), "classes": len(classnames)}
    check = _split_check(card, split, counts, opts)  # before any image is decoded
    images = IndexedImages(folder)
    templates, template_name = dataset_templates(card.dirname, card.templates)
    parts = {"labels": labels_digest(classnames)}
    known = _identify(card, data.folder, "zeroshot", images, parts, opts)
    t0 = time.perf_counter()
    weights, classifier_prov = classifier(opts.cache, encoder, classnames, templates, opts, f"{card.name} prompts")
    t1 = time.perf_counter()
    _, image_feats, image_prov = image_features(
        opts.cache, encoder, images, opts, f"{card.name} images", known and {**known, "split": split}
    )
    t2 = time.perf_counter()
    targets = torch.tensor(folder.targets)
    logits = 100.0 * image_feats @ weights
    metrics = {**accuracy(logits, targets, topk=(1, 5)), "true_prob": true_class_probability(logits, targets)}
    parts = {
        "images": known["images"] if known else images_digest(_gathered_digests(images, opts.shard)),
        "labels": parts["labels"],
    }  # in the report's order
    reuse = _features_provenance(classifier=classifier_prov, images=image_prov)
    return EvalOutput(
        dataset=card.name,
        model=encoder.name,
        metrics=dict(metrics),
        counts={**counts, "templates": len(templates)},
        seconds={"classifier": t1 - t0, "images": t2 - t1},
        diagnostics={"templates": template_name},
        provenance=_data_provenance(
            card,
            data.folder,
            split,
            "zeroshot",
            parts,
            counts,
            check,
            batch_size=opts.batch_size,
            label_file=str(labels_path),
            label_file_sha256=sha256_file(labels_path),
            **({"features": reuse} if reuse else {}),
        ),
        raw={
            "logits": logits,
            "targets": targets,
            "names": [key for key, _ in images.item_digests()],  # each image's path under the split folder
            "classnames": classnames,
            "dataset_dir": data.folder,
            "folder": card.dirname,
            "params": param_counts(encoder),
        },
    )


def evaluate_card(encoder, data: DatasetOnDisk, **options) -> EvalOutput:
    """Evaluate ``encoder`` on the resolved dataset ``data``; ``options`` are the fields of :class:`EvalOptions`."""
    opts = EvalOptions(**options)
    if data.card.kind == "retrieval":
        return evaluate_retrieval_card(encoder, data, opts)
    if data.card.kind == "zeroshot":
        return evaluate_zeroshot_card(encoder, data, opts)
    raise ValueError(f"dataset {data.card.name}: unknown kind {data.card.kind!r}")
