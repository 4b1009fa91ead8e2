"""The canary of a cached result: the probe set's features computed through exactly the path the result took.

A cache key names what a run can name; the canary shows what it cannot. Every entry stores the
features of a small, fixed, varied probe computed right after the entry's own features, through
the same reader (the probe images written in the dataset's format, opened by its reader class),
the same transform and pixel path, the same loader, the encoder (its backend or export), and the
same normalisation. Before an entry is reused, the canary is computed again and must equal the
stored one bit for bit: a patched function, a numeric flag or variable nobody listed, another
CPU instruction set, a model loaded in another dtype or a damaged export all move it.

The probe is the package's probe set (``qaclip_harness/probe``): 30 images in every PIL mode the
loaders meet and every size class (2 x 2 to 1280 x 960, 1:8 to 8:1), read in batches of 16, so
items sit at the first and the last place of a batch and the last batch is short; its 64
captions run from empty to past the 52-token cut, read in batches of 16 by length. A zero-shot
classifier's canary is the classifier of three probe captions as class names (the shortest, a
middle one, the longest) under the first two and the last of the entry's own templates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from qaclip_harness.cache.pixels import MemoryPixels, quiet_probe
from qaclip_harness.data.probe_twin import probe_twin
from qaclip_harness.eval.features import encode_image_dataset, encode_texts
from qaclip_harness.eval.zeroshot import Template, build_classifier
from qaclip_harness.probe.probe_set import load_probe_set

IMAGE_BATCH = 16  # 30 probe images: batches of 16 and 14
TEXT_BATCH = 16  # 64 probe captions: four batches, longest first

Arrays = dict[str, np.ndarray]


def once(compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute`` called at most once; later calls return its first result."""
    box: list[Any] = []

    def call() -> Any:
        if not box:
            box.append(compute())
        return box[0]

    return call


def image_canary(encoder: Any, dataset: Any, pixel_path: bool, num_workers: int = 0) -> Arrays | None:
    """The probe images' features through ``dataset``'s reader and transform, the loader and ``encoder``; None for an unknown reader."""
    twin = probe_twin(dataset)
    if twin is None:
        return None
    writer = None
    if pixel_path:
        _, height, width = twin.transform.output_shape
        writer = MemoryPixels((len(twin), height, width, 3))
    with quiet_probe():
        ids, feats = encode_image_dataset(
            encoder, twin, batch_size=IMAGE_BATCH, num_workers=num_workers, progress=False, pixel_writer=writer
        )
    return {"images": feats.numpy(), "image_ids": np.asarray(ids, dtype=np.int64)}


def probe_captions() -> list[str]:
    """The probe set's captions (empty to past the context length)."""
    return list(load_probe_set().captions)


def text_canary(encoder: Any) -> Arrays:
    """The probe captions' features through ``encoder``'s tokenizer and text tower."""
    return {"texts": encode_texts(encoder, probe_captions(), batch_size=TEXT_BATCH, progress=False).numpy()}


def canary_classes() -> list[str]:
    """Three probe captions used as class names: the shortest non-empty one, a middle one, the longest."""
    ranked = sorted((c for c in probe_captions() if c.strip()), key=lambda c: (len(c), c))
    return [ranked[0], ranked[len(ranked) // 2], ranked[-1]]


def classifier_canary(encoder: Any, templates: Sequence[Template]) -> Arrays:
    """The zero-shot classifier of the canary classes under the first two and the last of ``templates``."""
    chosen = list(templates[:2]) + ([templates[-1]] if len(templates) > 2 else [])
    weights = build_classifier(encoder, canary_classes(), chosen, batch_size=TEXT_BATCH)
    return {"classifier": weights.numpy()}
