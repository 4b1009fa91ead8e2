"""One evaluation end to end: dataset card + encoder -> metrics (the suite and the CLI share it)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..data.catalog import DatasetCard, dataset_dir, ensure_dataset, ensure_labels
from ..distributed import SINGLE, Shard
from ..progress import Progress
from .features import encode_image_dataset, encode_texts


@dataclass
class EvalOutput:
    """Metrics (percent), item counts, timings, and the raw result for predictions."""

    dataset: str
    model: str
    metrics: Dict[str, float]
    counts: Dict[str, int]
    seconds: Dict[str, float] = field(default_factory=dict)
    diagnostics: Dict[str, object] = field(default_factory=dict)
    raw: object = None


@dataclass(frozen=True)
class EvalOptions:
    """How to run an evaluation (the same for every dataset kind)."""

    batch_size: int = 64
    text_batch_size: int = 256
    num_workers: int = 0
    download: bool = False
    progress: Progress = True  # True: tqdm bars; a factory (qaclip_core.progress); False: none
    split: Optional[str] = None
    shard: Shard = SINGLE


class _WithIds(torch.utils.data.Dataset):
    """(image, target) items -> (index, image), so ImageFolder fits the image encoder and its loader."""

    def __init__(self, base):
        self.base = base
        self.transform = base.transform

    def item_id(self, i: int) -> int:
        """Items are numbered by their place in the folder."""
        return i

    def load_image(self, i: int):
        """The image before the transform (the folder's loader has converted it to RGB)."""
        return self.base.loader(self.base.samples[i][0])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return i, self.base[i][0]


def evaluate_retrieval_card(encoder, card: DatasetCard, data_root: Union[str, Path], opts: EvalOptions) -> EvalOutput:
    """Text-to-image and image-to-text recall of ``encoder`` on a Chinese-CLIP-format dataset."""
    from ..data.retrieval import load_retrieval_split
    from .retrieval import evaluate_retrieval

    ensure_dataset(card, data_root, download=opts.download)
    split = opts.split or card.split
    data = load_retrieval_split(dataset_dir(card, data_root).parent, card.dirname, split, transform=encoder.preprocess)
    t0 = time.perf_counter()
    image_ids, image_feats = encode_image_dataset(encoder, data.images, opts.batch_size, opts.num_workers, opts.progress, f"{card.name} images", opts.shard)
    t1 = time.perf_counter()
    text_ids = [t.text_id for t in data.texts]
    text_feats = encode_texts(encoder, [t.text for t in data.texts], opts.text_batch_size, opts.progress, f"{card.name} texts", opts.shard)
    t2 = time.perf_counter()
    result = evaluate_retrieval(image_ids, image_feats, text_ids, text_feats, data.text_to_images, k=10)
    t3 = time.perf_counter()
    return EvalOutput(
        dataset=card.name,
        model=encoder.name,
        metrics=dict(result.metrics),
        counts={"images": len(image_ids), "texts": len(text_ids)},
        seconds={"images": t1 - t0, "texts": t2 - t1, "ranking": t3 - t2},
        diagnostics={"near_ties": result.near_ties},
        raw=result,
    )


def _zeroshot_folder(card: DatasetCard, data_root: Union[str, Path], split: str, transform, classnames, labels_path):
    """The split's images as an ``ImageFolder``: ELEVATER layout checked, or an ImageNet-style folder."""
    folder = dataset_dir(card, data_root) / split
    if card.layout == "elevater":
        from ..data.elevater import ElevaterFolder

        return ElevaterFolder(folder, labels_path, len(classnames), transform=transform,
                              published_classes=card.classes, display=card.display)
    from ..data.imagenet import ImageNetFolder

    return ImageNetFolder(folder, transform=transform, num_labels=len(classnames), labels_path=labels_path)


def evaluate_zeroshot_card(encoder, card: DatasetCard, data_root: Union[str, Path], opts: EvalOptions) -> EvalOutput:
    """Zero-shot top-1/top-5 of ``encoder`` on class folders with Chinese labels (ImageNet, ELEVATER, fixture).

    The prompt templates follow the reference's rule, by the dataset's folder name
    (:mod:`qaclip_core.data.zeroshot_templates`).
    """
    from ..data.imagenet import read_labels
    from ..data.zeroshot_templates import template_set, templates_for
    from .zeroshot import accuracy, cached_classifier, param_counts

    ensure_dataset(card, data_root, download=opts.download)
    labels_path = ensure_labels(card, data_root, download=opts.download)
    classnames = read_labels(labels_path, expected_sha256=card.labels.get("sha256"))
    split = opts.split or card.split
    folder = _zeroshot_folder(card, data_root, split, encoder.preprocess, classnames, labels_path)
    templates = templates_for(card.dirname)
    t0 = time.perf_counter()
    classifier = cached_classifier(encoder, classnames, templates, opts.text_batch_size, opts.progress, opts.shard,
                                   desc=f"{card.name} prompts")
    t1 = time.perf_counter()
    _, image_feats = encode_image_dataset(encoder, _WithIds(folder), opts.batch_size, opts.num_workers, opts.progress, f"{card.name} images", opts.shard)
    t2 = time.perf_counter()
    targets = torch.tensor(folder.targets)
    logits = 100.0 * image_feats @ classifier
    metrics = accuracy(logits, targets, topk=(1, 5))
    return EvalOutput(
        dataset=card.name,
        model=encoder.name,
        metrics=dict(metrics),
        counts={"images": len(targets), "classes": len(classnames), "templates": len(templates)},
        seconds={"classifier": t1 - t0, "images": t2 - t1},
        diagnostics={"templates": template_set(card.dirname)},
        raw={"logits": logits, "targets": targets, "dataset_dir": dataset_dir(card, data_root), "folder": card.dirname,
             "params": param_counts(encoder)},
    )


def evaluate_card(encoder, card: DatasetCard, data_root: Union[str, Path], **options) -> EvalOutput:
    """Evaluate ``encoder`` on ``card``; ``options`` are the fields of :class:`EvalOptions`."""
    opts = EvalOptions(**options)
    if card.kind == "retrieval":
        return evaluate_retrieval_card(encoder, card, data_root, opts)
    if card.kind == "zeroshot":
        return evaluate_zeroshot_card(encoder, card, data_root, opts)
    raise ValueError(f"dataset {card.name}: unknown kind {card.kind!r}")
