"""ELEVATER zero-shot data in Chinese-CLIP's layout (``zeroshot_dataset.md``), checked before use.

Each dataset folder holds::

    label_cn.txt         one Chinese class name per line; line i names class id i
    label.txt            the English names (not used)
    test/<class id>/     the images of one class
    index.json           optional: the sample order the ELEVATER server expects (predictions only)

Class ids are ``0`` to ``9`` when a dataset has at most 10 classes and zero-padded to 3 digits
(``000`` to ``099``) otherwise, so that the sorted folder names (how torchvision's
``ImageFolder``, and with it the reference, numbers the classes) are the label order. A folder
that breaks this would silently pair images with the wrong class names, so it is an error here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Union

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from qaclip_harness.data.imagenet import _checked_loader, class_samples
from qaclip_harness.documents import read_json
from qaclip_harness.errors import DatasetError

PathLike = Union[str, Path]
INDEX_FILE = "index.json"


def class_ids(n: int) -> list[str]:
    """Folder names of ``n`` classes: ``0``..``9`` up to 10 classes, else zero-padded to (at least) 3 digits."""
    if n < 1:
        raise ValueError(f"need at least one class, got {n}")
    width = 1 if n <= 10 else max(3, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def _describe(ids: list[str]) -> str:
    return f"{ids[0]} to {ids[-1]}" if len(ids) > 1 else ids[0]


def _has_image(folder: str) -> bool:
    # the files the class folder's walk takes (imagenet.class_samples: directory links are not followed)
    for _, _, files in os.walk(folder, followlinks=False):
        if any(has_file_allowed_extension(name, IMG_EXTENSIONS) for name in files):
            return True
    return False


def check_class_folders(folder: Path, num_labels: int, labels_path: PathLike) -> list[str]:
    """The class folders of ``folder``, which must be exactly the ids of ``num_labels`` classes, none empty."""
    try:
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as e:
        raise DatasetError(f"cannot list the class folders of {folder}: {e}") from e
    want = class_ids(num_labels)
    if len(found) != num_labels:
        raise DatasetError(
            f"{folder} has {len(found)} class folders but the label file {labels_path} names {num_labels} classes; "
            f"expected the folders {_describe(want)}, one per line of the label file"
        )
    if found != want:
        unexpected = [n for n in found if n not in set(want)]
        missing = [n for n in want if n not in set(found)]
        rule = (
            "plain ids 0 to 9 (at most 10 classes)"
            if num_labels <= 10
            else "ids zero-padded to 3 digits (more than 10 classes)"
        )
        raise DatasetError(
            f"{folder}: class folders must be named {_describe(want)} ({rule}) for the {num_labels} classes of "
            f"{labels_path}; found unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}, "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    empty = [name for name in found if not _has_image(str(folder / name))]
    if empty:
        raise DatasetError(
            f"{folder / empty[0]}: class folder holds no image files (expected {', '.join(IMG_EXTENSIONS)})"
            + (f"; also empty: {', '.join(empty[1:6])}" if len(empty) > 1 else "")
        )
    return found


class ElevaterFolder(ImageFolder):
    """The ``test/`` folder of an ELEVATER dataset: ``ImageFolder`` semantics, with the layout checked first.

    The samples, their order and the images' decoding are torchvision's ``ImageFolder``'s, as in
    the reference; only the checks are added.
    """

    def __init__(
        self,
        folder: PathLike,
        labels_path: PathLike,
        num_labels: int,
        transform: Callable[[Any], Any] | None = None,
        published_classes: int | None = None,
        display: str = "",
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(
                f"{display or 'dataset'}: split folder {folder} not found (expected test/<class id>/ images)"
            )
        check_class_folders(folder, num_labels, labels_path)
        if published_classes is not None and published_classes != num_labels:
            warnings.warn(
                f"{display}: the label file {labels_path} names {num_labels} classes but the published numbers were "
                f"measured on {published_classes}; results are not comparable with them",
                UserWarning,
                stacklevel=2,
            )
        try:
            super().__init__(str(folder), transform=transform, loader=_checked_loader)
        except OSError as e:
            raise DatasetError(f"{folder}: {e}") from e
        self.folder = folder

    make_dataset = staticmethod(class_samples)  # directory links not followed, each file once


def read_index(dataset_dir: PathLike, num_images: int | None = None) -> list[int] | None:
    """``index.json`` of a dataset (the sample order for the ELEVATER server), checked; ``None`` when absent.

    Without ``num_images`` only its form is checked (before an evaluation), with it the range too.
    """
    path = Path(dataset_dir) / INDEX_FILE
    if not path.is_file():
        return None
    index = read_json(path, DatasetError)  # strict: a duplicate key, deep nesting, a bad byte named with the place
    if not isinstance(index, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
        raise DatasetError(f"{path}: expected a JSON list of sample numbers (integers), got {type(index).__name__}")
    bad = [i for i in index if i < 0 or (num_images is not None and i >= num_images)]
    if bad and num_images is None:
        raise DatasetError(f"{path}: sample number {bad[0]} is negative")
    if bad and num_images is not None:
        raise DatasetError(
            f"{path}: sample number {bad[0]} is outside 0 to {num_images - 1} (the split has {num_images} images)"
        )
    return index
