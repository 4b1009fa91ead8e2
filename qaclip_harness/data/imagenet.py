"""ImageNet-1K zero-shot data: class folders (ELEVATER layout) and the Chinese label file."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Union, cast

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader, has_file_allowed_extension

from qaclip_harness.data.fingerprint import item_digest
from qaclip_harness.errors import DatasetError

PathLike = Union[str, Path]
# sha256 of the label_cn.txt that Chinese-CLIP publishes (and its reported numbers used)
LABEL_CN_SHA256 = "f7b6f4bb0ddec755dbea41577c7c5155a4fa2852706f2263c0d3015dc67a8181"


def read_labels(path: PathLike, expected_sha256: str | None = LABEL_CN_SHA256, strict: bool = False) -> list[str]:
    """Class names, one per line, stripped (the reference's reading); checks the file's sha256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read the label file {path}: {e}") from e
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            msg = (
                f"label file {path} has sha256 {actual}, expected {expected_sha256}; the published zero-shot "
                "numbers used the pinned file, so results with this one may not be comparable"
            )
            if strict:
                raise DatasetError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"label file {path} is not UTF-8 ({e})") from e
    # text-mode readlines() splits on \n, \r\n and \r only (not on \u2028 etc.) and keeps blank lines
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    labels = [line.strip() for line in lines]
    if not labels:
        raise DatasetError(f"label file {path} is empty")
    return labels


def _checked_loader(path: str) -> Any:
    """torchvision's default loader (open, convert to RGB), with errors naming the file."""
    try:
        return default_loader(path)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {e})") from e


def class_samples(
    directory: str | Path,
    class_to_idx: dict[str, int],
    extensions: tuple[str, ...] | None = None,
    is_valid_file: Callable[[str], bool] | None = None,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """``(path, class index)`` of every image under the class folders, as ``ImageFolder`` lists them, but safe.

    torchvision's walk follows directory links: a link that points back up (``loop -> .``) makes a
    class folder hold itself, and its images are counted again at every level (132 instead of
    12). Here directory links are not followed and a file reached twice (a file link beside its
    target) is counted once; both are named in a warning. Order and class numbering are ImageFolder's.
    """

    def valid(path: str) -> bool:
        return (
            is_valid_file(path)
            if is_valid_file is not None
            else has_file_allowed_extension(path, cast(tuple[str, ...], extensions))
        )

    samples: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    links, repeats, empty = [], [], []
    for name in sorted(class_to_idx):
        top = os.path.join(directory, name)
        if not os.path.isdir(top):
            continue
        found = False
        for root, dirs, fnames in sorted(os.walk(top, followlinks=False)):
            links += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
            for fname in sorted(fnames):
                path = os.path.join(root, fname)
                if not valid(path):
                    continue
                real = os.path.realpath(path)
                if real in seen:
                    repeats.append(f"{path} (= {seen[real]})")
                    continue
                seen[real] = path
                samples.append((path, class_to_idx[name]))
                found = True
        if not found:
            empty.append(name)
    if links or repeats:
        parts = []
        if links:
            parts.append(
                f"{len(links)} directory link(s) not followed ({', '.join(sorted(links)[:3])}"
                f"{' ...' if len(links) > 3 else ''}): a link may lead back into the folder and count its images again"
            )
        if repeats:
            parts.append(
                f"{len(repeats)} file(s) reached twice through links counted once ({', '.join(repeats[:3])}"
                f"{' ...' if len(repeats) > 3 else ''})"
            )
        warnings.warn(f"{directory}: " + "; ".join(parts), UserWarning, stacklevel=3)
    if empty and not allow_empty:
        raise DatasetError(
            f"{directory}: no image files in the class folder(s) {', '.join(empty[:5])}"
            f"{' ...' if len(empty) > 5 else ''} (links to folders are not followed)"
        )
    return samples


def resolve_imagenet_dir(root: PathLike, split: str = "test") -> Path:
    """``<root>/imagenet/<split>``, ``<root>/datasets/imagenet/<split>``, or ``root`` itself."""
    root = Path(root).expanduser()
    for cand in (root / "imagenet" / split, root / "datasets" / "imagenet" / split):
        if cand.is_dir():
            return cand
    if root.is_dir():
        return root
    raise DatasetError(
        f"ImageNet folder not found: expected {root / 'imagenet' / split} (one folder per class, sorted "
        "like the 1,000 synsets) or a direct path to the class folders; the validation images come from "
        "image-net.org (licence required)"
    )


class ImageNetFolder(ImageFolder):
    """``ImageFolder`` over the class folders, checked against the label count.

    Images go through torchvision's default loader (which converts to RGB before the transform),
    exactly as the reference's ``ImageFolder`` does.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        num_labels: int | None = None,
        labels_path: PathLike | None = None,
        split: str = "test",
    ):
        folder = resolve_imagenet_dir(root, split)
        if num_labels is None and labels_path is not None:
            num_labels = len(read_labels(labels_path, expected_sha256=None))
        classes, _ = self.find_classes(str(folder))
        if num_labels is not None and len(classes) != num_labels:
            where = f" in {labels_path}" if labels_path is not None else ""
            raise DatasetError(f"{folder} has {len(classes)} class folders but there are {num_labels} labels{where}")
        try:
            super().__init__(str(folder), transform=transform, loader=_checked_loader)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"{folder}: {e}") from e
        self.folder = folder

    make_dataset = staticmethod(class_samples)  # directory links not followed, each file once

    def find_classes(self, directory: str):  # type: ignore[override]
        """Sorted class folder names and their indices (errors as DatasetError)."""
        try:
            return super().find_classes(directory)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"{directory}: {e}") from e


def _decode_rgb(data: bytes, path: str) -> Image.Image:
    """The image in ``data`` converted to RGB, as torchvision's default (PIL) loader opens a file."""
    try:
        image = Image.open(io.BytesIO(data))
        return image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {e})") from e


class IndexedImages(torch.utils.data.Dataset):
    """The images of an :class:`ImageNetFolder` as ``(index, image)`` items for the batch loader.

    Each file's bytes are read once, hashed for the data fingerprint (keyed by the path relative
    to the split folder) and decoded exactly as the folder's own loader decodes them.
    """

    def __init__(self, folder: ImageNetFolder):
        self.base = folder
        self.transform = folder.transform
        self.digests: list[bytes | None] = [None] * len(folder.samples)
        self._keys = [os.path.relpath(p, folder.folder).replace(os.sep, "/") for p, _ in folder.samples]

    def item_id(self, i: int) -> int:
        """Items are numbered by their place in the folder."""
        return i

    def read_bytes(self, i: int) -> bytes:
        """The file of item ``i``, hashed for the fingerprint on the way."""
        path = self.base.samples[i][0]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DatasetError(f"cannot read image {path} ({e.strerror or e})") from e
        self.digests[i] = item_digest(data)
        return data

    def load_image(self, i: int) -> Image.Image:
        """The RGB image of item ``i`` (its bytes hashed on the way)."""
        return _decode_rgb(self.read_bytes(i), self.base.samples[i][0])

    def source_files(self) -> list[Path]:
        """The image files (their sizes and times identify the data between runs)."""
        return [Path(p) for p, _ in self.base.samples]

    def item_digests(self) -> list[tuple[str, bytes | None]]:
        """(relative path, sha256 of the file or None if not read yet) for every item."""
        return list(zip(self._keys, self.digests))

    def __len__(self) -> int:
        return len(self.base.samples)

    def __getitem__(self, i: int):
        image = self.load_image(i)
        return i, (image if self.transform is None else self.transform(image))
