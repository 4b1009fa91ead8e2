"""What the cache's canary costs: measured on the fixture, and estimated for the real datasets from a ViT-B/16.

    python tools/canary_cost.py            # median of 5 timings each, on this machine's CPU
    python tools/canary_cost.py --repeat 9 --skip-real

Every reuse of a cached entry (and every write of one) computes its canary: the 30 probe images
through the entry's reader, transform and loader and the encoder (batches of 16), the 64 probe
captions (batches of 16), or a classifier of 3 classes x 3 templates (docs/caching.md). This
prints, for both fixture models, the time of each canary against the time of the encode it
guards, and, for a randomly initialised ViT-B/16@RoBERTa-base on the CPU, the canary's time against
an encode of each real dataset's split (its per-image and per-caption cost measured on batches of
64, times the split's size from qaclip_harness/data/datasets.yaml).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REAL = {  # dataset: (images, texts) of the evaluated split (qaclip_harness/data/datasets.yaml)
    "Flickr30K-CN test": (1000, 5000),
    "COCO-CN test": (1000, 1053),
    "MUGE valid": (30588, 5008),
    "ImageNet val": (50000, 0),
}


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fixture(repeat: int) -> None:
    """Each canary of both fixture models against the encode it guards."""
    from qaclip_core.registry import get_card
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.data.imagenet import ImageNetFolder, IndexedImages
    from qaclip_harness.data.prompts import templates_for
    from qaclip_harness.data.retrieval import load_retrieval_split
    from qaclip_harness.eval.canary import classifier_canary, image_canary, text_canary
    from qaclip_harness.eval.features import encode_image_dataset, encode_texts
    from qaclip_harness.eval.zeroshot import build_classifier
    from qaclip_harness.fetch.datasets import resolve_dataset
    from qaclip_harness.fixture import MODELS
    from qaclip_harness.fixture.shapes import write_shapes_dataset

    root = Path(tempfile.mkdtemp(prefix="qaclip-canary-cost-"))
    write_shapes_dataset(root)
    retrieval = resolve_dataset(get_dataset("fixture-shapes"), root)
    zeroshot = resolve_dataset(get_dataset("fixture-shapes-cls"), root)
    print("| model | step | encode (ms) | canary (ms) | canary / encode |\n|---|---|---|---|---|")
    for name, (_, checkpoint) in MODELS.items():
        enc = load_encoder(get_card(name), checkpoint, device="cpu")
        split = load_retrieval_split(retrieval.datasets_folder, retrieval.card.dirname, "test", enc.preprocess)
        texts = [t.text for t in split.texts]
        classes = [line.strip() for line in zeroshot.labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        templates = templates_for(zeroshot.card.dirname)
        folder = IndexedImages(ImageNetFolder(zeroshot.folder / "test", transform=enc.preprocess))
        rows = [
            (
                f"images ({len(split.images)}, LMDB, uint8 path)",
                lambda enc=enc, split=split: encode_image_dataset(
                    enc, split.images, batch_size=64, num_workers=2, progress=False
                ),
                lambda enc=enc, split=split: image_canary(enc, split.images, True, 2),
            ),
            (
                f"images ({len(folder)}, class folders)",
                lambda enc=enc, folder=folder: encode_image_dataset(
                    enc, folder, batch_size=64, num_workers=2, progress=False
                ),
                lambda enc=enc, folder=folder: image_canary(enc, folder, False, 2),
            ),
            (
                f"texts ({len(texts)})",
                lambda enc=enc, texts=texts: encode_texts(enc, texts, batch_size=256, progress=False),
                lambda enc=enc: text_canary(enc),
            ),
            (
                f"classifier ({len(classes)} x {len(templates)} prompts)",
                lambda enc=enc, c=classes, t=templates: build_classifier(enc, c, t, batch_size=256),
                lambda enc=enc, t=templates: classifier_canary(enc, t),
            ),
        ]
        for step, encode, canary in rows:
            e, c = median_seconds(encode, repeat), median_seconds(canary, repeat)
            print(f"| {name} | {step} | {e * 1e3:.0f} | {c * 1e3:.0f} | {c / e:.2f} |")


def real(repeat: int) -> None:
    """The canary of a ViT-B/16 against an encode of each real split, from per-item costs measured here."""
    import torch

    from qaclip_core.model.clip import create_model
    from qaclip_harness.backends.native import NativeEncoder
    from qaclip_harness.data.probe_twin import probe_reader
    from qaclip_harness.eval.canary import image_canary, text_canary
    from qaclip_harness.eval.features import encode_image_dataset, encode_texts
    from qaclip_harness.probe.probe_set import load_probe_set

    torch.manual_seed(0)
    enc = NativeEncoder(create_model("ViT-B-16@RoBERTa-wwm-ext-base-chinese"), name="ViT-B/16 (random)")
    probe = twin = probe_reader(enc.preprocess)
    batch = list(range(len(twin))) * 3  # 90 probe images: per-image cost at batch 64, decoding included

    class Repeated(torch.utils.data.Dataset):
        transform = twin.transform

        def __len__(self) -> int:
            return 64

        def load_image(self, i: int) -> object:
            return twin.load_image(batch[i])

        def item_id(self, i: int) -> int:
            return i

    per_image = (
        median_seconds(
            lambda: encode_image_dataset(enc, Repeated(), batch_size=64, num_workers=2, progress=False), repeat
        )
        / 64
    )
    captions = list(load_probe_set().captions) * 4
    per_caption = median_seconds(lambda: encode_texts(enc, captions, batch_size=256, progress=False), repeat) / len(
        captions
    )
    image_c = median_seconds(lambda: image_canary(enc, probe, True, 2), repeat)
    text_c = median_seconds(lambda: text_canary(enc), repeat)
    print(
        f"\nViT-B/16@RoBERTa-base, random weights, CPU fp32: {per_image * 1e3:.0f} ms an image, "
        f"{per_caption * 1e3:.1f} ms a caption (batches of 64 and 256); image canary {image_c:.2f} s, "
        f"text canary {text_c:.2f} s"
    )
    print("| split | images | texts | image canary / image encode | text canary / text encode |\n|---|---|---|---|---|")
    for name, (images, texts) in REAL.items():
        share_i = image_c / (per_image * images)
        share_t = f"{text_c / (per_caption * texts):.2%}" if texts else "-"
        print(f"| {name} | {images:,} | {texts:,} | {share_i:.2%} | {share_t} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-real", action="store_true", help="only the fixture table")
    args = p.parse_args(argv)
    fixture(args.repeat)
    if not args.skip_real:
        real(max(1, args.repeat // 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
