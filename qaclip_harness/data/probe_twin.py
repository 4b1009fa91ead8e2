"""The probe set's images in a dataset of the same reader as a given one: the canary's input (docs/caching.md).

A cached result is reused only when this run reproduces its canary, the features (or pixels) of
the probe images computed through exactly the reader, transform and loader the result took. So
the probe images are written once per process in the reader's own format (an LMDB of base64
images, or class folders) and opened with the reader's class and the dataset's transform.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from qaclip_harness.probe.probe_set import IMAGES_DIR, read_manifest, read_pinned

_LOCK = threading.Lock()
_SCRATCH: dict[str, Path] = {}


def probe_images() -> list[tuple[str, bytes]]:
    """(name, bytes) of every probe image, in manifest order, each checked against its pinned sha256."""
    return [(name, read_pinned(IMAGES_DIR / name, e["sha256"])) for name, e in read_manifest()["images"].items()]


def _scratch(kind: str) -> Path:
    """A folder of this process holding the probe images in format ``kind`` (written once, removed at exit)."""
    with _LOCK:
        if kind not in _SCRATCH:
            root = Path(tempfile.mkdtemp(prefix=f"qaclip-probe-{kind}-"))
            atexit.register(shutil.rmtree, root, True)
            if kind == "lmdb":
                from qaclip_harness.data.retrieval import write_retrieval_split

                images = {i: data for i, (_, data) in enumerate(probe_images(), start=1)}
                write_retrieval_split(root, "probe", "test", images, [])
            else:
                for i, (name, data) in enumerate(probe_images()):
                    # two classes, so that an item's place and its folder both vary
                    folder = root / "test" / f"class-{i % 2}"
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{i:02d}-{name}").write_bytes(data)
            _SCRATCH[kind] = root
        return _SCRATCH[kind]


def probe_reader(transform: Any) -> Any:
    """The probe images as an LMDB dataset (the retrieval reader) with ``transform``."""
    from qaclip_harness.data.retrieval import LmdbImages, lmdb_path

    return LmdbImages(lmdb_path(_scratch("lmdb") / "probe", "test"), transform)


def probe_twin(dataset: Any) -> Any | None:
    """A dataset of ``dataset``'s reader class and transform holding the probe images; None for an unknown reader."""
    from qaclip_harness.data.imagenet import ImageNetFolder, IndexedImages
    from qaclip_harness.data.retrieval import LmdbImages, lmdb_path

    transform = getattr(dataset, "transform", None)
    if isinstance(dataset, LmdbImages):
        return type(dataset)(lmdb_path(_scratch("lmdb") / "probe", "test"), transform)
    if isinstance(dataset, IndexedImages):
        return type(dataset)(ImageNetFolder(_scratch("folders") / "test", transform=transform))
    return None
