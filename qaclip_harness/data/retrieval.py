"""Chinese-CLIP retrieval data: an LMDB of base64 images plus a jsonl of captions.

Layout (as Chinese-CLIP documents it)::

    <root>/<Dir>/lmdb/<split>/imgs      LMDB: b"<image id>" -> urlsafe base64 of JPEG/PNG, b"num_images" -> count
    <root>/<Dir>/<split>_texts.jsonl    {"text_id": int, "text": str, "image_ids": [int, ...]} per line

``root`` may be ``${DATAPATH}`` (holding ``datasets/``) or ``${DATAPATH}/datasets`` itself.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import lmdb
import torch
from PIL import Image

from qaclip_harness.data.fingerprint import item_digest
from qaclip_harness.errors import DatasetError

PathLike = Union[str, Path]
NUM_IMAGES_KEY = b"num_images"
HOW_TO_GET = (
    "download the dataset zip linked from Chinese-CLIP's README (datasets/<Dir>/ with lmdb/ and *_texts.jsonl), "
    "or build one from <split>_imgs.tsv + <split>_texts.jsonl with Chinese-CLIP's preprocess/build_lmdb_dataset.py"
)


def _datasets_parent(root: PathLike) -> Path:
    root = Path(root).expanduser()
    return root / "datasets" if (root / "datasets").is_dir() else root


def find_dataset_dir(root: PathLike, dirname: str) -> Path:
    """``<root>/datasets/<dirname>`` or ``<root>/<dirname>``, whichever exists."""
    root = Path(root).expanduser()
    candidates = [root / "datasets" / dirname, root / dirname]
    for cand in candidates:
        if cand.is_dir():
            return cand
    raise DatasetError(
        f"dataset folder {dirname!r} not found: expected {candidates[0]} or {candidates[1]}; {HOW_TO_GET}"
    )


def lmdb_path(dataset_dir: PathLike, split: str) -> Path:
    """``<dataset_dir>/lmdb/<split>/imgs``."""
    return Path(dataset_dir) / "lmdb" / split / "imgs"


def texts_path(dataset_dir: PathLike, split: str) -> Path:
    """``<dataset_dir>/<split>_texts.jsonl``."""
    return Path(dataset_dir) / f"{split}_texts.jsonl"


LMDB_DAMAGED = (
    "the file is damaged or was cut short (an interrupted copy or unzip?): extract or rebuild the dataset again"
)


def _lmdb_error(path: Path, what: str, err: BaseException) -> DatasetError:
    """A DatasetError for an LMDB failure, naming the path and what to do."""
    detail = str(err).replace(str(path), "").strip(" :") or type(err).__name__
    return DatasetError(f"image LMDB {path}: {what} failed ({detail}); {LMDB_DAMAGED}")


def _check_size(env: lmdb.Environment, path: Path) -> None:
    """Refuse a data file shorter than the pages the environment says it holds.

    LMDB maps the file into memory: reading a page past the end of a truncated file is not an
    error but a SIGBUS that kills the process, so the size is checked before any page is read.
    """
    data = path / "data.mdb" if path.is_dir() else path
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = data.stat().st_size
    if have < need:
        raise DatasetError(
            f"image LMDB {path}: {data.name} has {have:,} bytes but its own header says it holds {need:,} "
            f"({env.info()['last_pgno'] + 1:,} pages); {LMDB_DAMAGED}"
        )


def _open_env(path: Path) -> lmdb.Environment:
    # lock=False: the data is never written while read; readahead off suits random access
    data = path / "data.mdb"
    if path.is_dir() and not data.is_file():
        raise DatasetError(f"image LMDB {path}: no data.mdb in the folder; {LMDB_DAMAGED}")
    if data.is_file() and data.stat().st_size == 0:
        raise DatasetError(f"image LMDB {path}: data.mdb is empty (0 bytes); {LMDB_DAMAGED}")
    try:
        env = lmdb.open(
            str(path), readonly=True, create=False, lock=False, readahead=False, meminit=False, max_readers=512
        )
    except lmdb.Error as e:
        if "already open" in str(e):
            raise DatasetError(
                f"cannot open the image LMDB {path}: {e} (py-lmdb allows one open environment per "
                "file and process: close the other one first)"
            ) from e
        raise _lmdb_error(path, "opening", e) from e
    try:
        _check_size(env, path)
    except BaseException:
        env.close()
        raise
    return env


class _EnvHandle:
    """One process's read-only environment of one LMDB, closed when no dataset uses it."""

    def __init__(self, path: Path):
        self.env = _open_env(path)
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 -- a finaliser must not raise (it may run at interpreter exit)
            pass


# py-lmdb refuses to open an environment twice in a process, so datasets over one path share a
# handle; and a forked child inherits the parent's open handles, which it must close (LMDB
# forbids using them after fork) before it may open its own.
_HANDLES: weakref.WeakValueDictionary[str, _EnvHandle] = weakref.WeakValueDictionary()
_HANDLES_PID = os.getpid()


def _shared_handle(path: Path) -> _EnvHandle:
    global _HANDLES_PID
    if os.getpid() != _HANDLES_PID:
        for stale in list(_HANDLES.values()):
            stale.env.close()
        _HANDLES.clear()
        _HANDLES_PID = os.getpid()
    key = str(path.resolve())
    handle = _HANDLES.get(key)
    if handle is None:
        handle = _EnvHandle(path)
        _HANDLES[key] = handle
    return handle


def _scan_keys(env: lmdb.Environment, path: Path) -> tuple[list[int], list[bytes]]:
    """Image ids and raw keys in cursor order (byte-lexicographic), with the count checks."""
    try:
        with env.begin() as txn:
            raw_count = txn.get(NUM_IMAGES_KEY)
            keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False) if bytes(k) != NUM_IMAGES_KEY]
    except lmdb.Error as e:
        raise _lmdb_error(path, "reading the keys", e) from e
    if raw_count is None:
        raise DatasetError(f"image LMDB {path} has no 'num_images' key (found {len(keys)} image keys)")
    try:
        count_text = raw_count.decode("ascii").strip()
        if not count_text.isdigit():
            raise ValueError
        declared = int(count_text)
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(
            f"image LMDB {path}: 'num_images' is not a decimal count: {bytes(raw_count)[:40]!r}"
        ) from None
    ids: list[int] = []
    seen: dict[int, bytes] = {}
    for key in keys:
        # ASCII digits only: the reference's int() would also take signs, spaces and underscores
        if not (key.isascii() and key.isdigit()):
            raise DatasetError(f"image LMDB {path}: key {key[:40]!r} is not a decimal image id")
        image_id = int(key)
        if image_id in seen:
            raise DatasetError(
                f"image LMDB {path}: keys {seen[image_id]!r} and {key!r} are the same image id {image_id}"
            )
        seen[image_id] = key
        ids.append(image_id)
    if declared != len(ids):
        raise DatasetError(f"image LMDB {path}: 'num_images' says {declared} but it holds {len(ids)} image keys")
    return ids, keys


class LmdbImages(torch.utils.data.Dataset):
    """``(image_id, transform(image))`` items of an image LMDB, in the LMDB's key order.

    The key order (byte-lexicographic: ``10`` before ``9``) is the order the reference writes
    features in, which decides ties. Items are read by key, and each process uses its own
    read-only environment, so DataLoader workers never share an LMDB handle across ``fork``
    (threads of one process share it, each read in its own transaction).
    py-lmdb allows one open environment per file and process: while this dataset is alive,
    other code (such as cn_clip's ``EvalImgDataset``) cannot open the same LMDB.
    """

    def __init__(self, path: PathLike, transform: Callable[[Image.Image], Any] | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"image LMDB not found: expected a directory at {self.path}; {HOW_TO_GET}")
        self.transform = transform
        self._handle: _EnvHandle | None = _shared_handle(self.path)
        self.ids, self._keys = _scan_keys(self._handle.env, self.path)
        # sha256 of each image's bytes, filled as items are read (by any thread): the data fingerprint
        self.digests: list[bytes | None] = [None] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def _environment(self) -> lmdb.Environment:
        if self._handle is None or self._handle.pid != os.getpid():
            self._handle = _shared_handle(self.path)
        return self._handle.env

    def item_id(self, index: int) -> int:
        """The image id of item ``index``."""
        return self.ids[index]

    def read_bytes(self, index: int) -> bytes:
        """The decoded (JPEG/PNG) bytes of item ``index``."""
        image_id, key = self.ids[index], self._keys[index]
        try:
            with self._environment().begin() as txn:
                value = txn.get(key)
        except lmdb.Error as e:
            raise _lmdb_error(self.path, f"reading image id {image_id}", e) from e
        if value is None:
            raise DatasetError(f"image LMDB {self.path}: image id {image_id} disappeared (key {key!r})")
        if not value.isascii():
            raise DatasetError(
                f"image LMDB {self.path}: image id {image_id} is not valid urlsafe base64 (it holds non-ASCII bytes)"
            )
        try:
            # non-validating, like the reference: characters outside the alphabet are skipped;
            # decoding the bytes directly saves two copies made with the GIL held
            data = base64.urlsafe_b64decode(value)
        except (binascii.Error, ValueError) as e:
            raise DatasetError(f"image LMDB {self.path}: image id {image_id} is not valid urlsafe base64 ({e})") from e
        self.digests[index] = item_digest(data)
        return data

    def item_digests(self) -> list[tuple[int, bytes | None]]:
        """(image id, sha256 of its bytes or None if not read yet) for every item."""
        return list(zip(self.ids, self.digests))

    def source_files(self) -> list[Path]:
        """The files the images are read from (their sizes and times identify the data between runs)."""
        return [self.path / "data.mdb"] if self.path.is_dir() else [self.path]

    def load_image(self, index: int) -> Image.Image:
        """The PIL image of item ``index``, fully decoded (so truncated files fail here)."""
        data = self.read_bytes(index)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
            raise DatasetError(
                f"image LMDB {self.path}: image id {self.ids[index]} cannot be decoded as an image ({type(e).__name__}: {e})"
            ) from e
        return image

    def __getitem__(self, index: int) -> tuple[int, Any]:
        image = self.load_image(index)
        return self.ids[index], (image if self.transform is None else self.transform(image))


@dataclass
class TextRecord:
    """One caption and the ids of the images it describes."""

    text_id: int
    text: str
    image_ids: list[int]
    line: int | None = field(default=None, compare=False, repr=False)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_texts(path: PathLike) -> list[TextRecord]:
    """Parse a ``<split>_texts.jsonl`` file, checking every field."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"caption file not found: expected {path}; {HOW_TO_GET}")
    records: list[TextRecord] = []
    first_line: dict[int, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 ({e})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({e})") from e
            except (ValueError, RecursionError) as e:  # more digits than Python converts, or nesting too deep
                detail = "nesting too deep" if isinstance(e, RecursionError) else "a number with too many digits"
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({detail})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for name in ("text_id", "text", "image_ids"):
                if name not in obj:
                    raise DatasetError(f"{path}:{lineno}: missing field {name!r}")
            text_id, text, image_ids = obj["text_id"], obj["text"], obj["image_ids"]
            if not _is_int(text_id):
                raise DatasetError(f"{path}:{lineno}: text_id must be an integer, got {text_id!r}")
            if not isinstance(text, str):
                raise DatasetError(f"{path}:{lineno}: text of text_id {text_id} must be a string, got {text!r}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # a \uD800 escape without its other half: valid JSON, but no text
                raise DatasetError(
                    f"{path}:{lineno}: text of text_id {text_id} holds a lone surrogate "
                    f"\\u{ord(text[e.start]):04x} at character {e.start + 1} (half of a \\uXXXX escape "
                    f"pair); expected text that UTF-8 can encode"
                ) from None
            if not isinstance(image_ids, list) or not image_ids or not all(_is_int(i) for i in image_ids):
                raise DatasetError(
                    f"{path}:{lineno}: image_ids of text_id {text_id} must be a non-empty list of integers, got {image_ids!r}"
                )
            if text_id in first_line:
                raise DatasetError(
                    f"{path}:{lineno}: duplicate text_id {text_id} (first on line {first_line[text_id]})"
                )
            first_line[text_id] = lineno
            records.append(TextRecord(text_id, text, list(image_ids), line=lineno))
    if not records:
        raise DatasetError(f"{path}: no captions (the file is empty)")
    return records


def image_to_texts(texts: Sequence[TextRecord]) -> dict[int, list[int]]:
    """image_id -> text_ids, keyed in order of first appearance (as the reference's .tr.jsonl)."""
    out: dict[int, list[int]] = {}
    for rec in texts:
        for image_id in rec.image_ids:
            out.setdefault(image_id, []).append(rec.text_id)
    return out


@dataclass
class RetrievalSplit:
    """An image LMDB, its captions and both ground-truth maps."""

    images: LmdbImages
    texts: list[TextRecord]
    text_to_images: dict[int, list[int]]
    image_to_texts: dict[int, list[int]]
    texts_file: Path | None = None


def load_retrieval_split(
    root: PathLike, dirname: str, split: str, transform: Callable[[Image.Image], Any] | None = None
) -> RetrievalSplit:
    """Open ``<root>/<dirname>`` split ``split`` and check captions against the images."""
    folder = find_dataset_dir(root, dirname)
    images = LmdbImages(lmdb_path(folder, split), transform)
    tfile = texts_path(folder, split)
    texts = read_texts(tfile)
    if not images.ids:
        raise DatasetError(f"image LMDB {images.path} holds no images (split {split!r} is empty)")
    known = set(images.ids)
    for rec in texts:
        for image_id in rec.image_ids:
            if image_id not in known:
                raise DatasetError(
                    f"{tfile}:{rec.line}: text_id {rec.text_id} refers to image id {image_id}, "
                    f"which is not in the image LMDB {images.path}"
                )
    return RetrievalSplit(
        images=images,
        texts=texts,
        text_to_images={rec.text_id: list(rec.image_ids) for rec in texts},
        image_to_texts=image_to_texts(texts),
        texts_file=tfile,
    )


def write_retrieval_split(
    root: PathLike, dirname: str, split: str, images: dict[int, bytes], texts: Sequence[TextRecord]
) -> Path:
    """Write ``images`` (id -> encoded bytes) and ``texts`` in the Chinese-CLIP layout; returns the dataset folder."""
    folder = _datasets_parent(root) / dirname
    path = lmdb_path(folder, split)
    path.mkdir(parents=True, exist_ok=True)
    encoded = {int(i): base64.urlsafe_b64encode(data) for i, data in images.items()}
    map_size = 2 * sum(len(v) + 64 for v in encoded.values()) + (1 << 20)
    env = lmdb.open(str(path), map_size=map_size)
    try:
        with env.begin(write=True) as txn:
            for image_id, b64 in encoded.items():
                txn.put(str(image_id).encode("ascii"), b64)
            txn.put(NUM_IMAGES_KEY, str(len(encoded)).encode("ascii"))
    finally:
        env.close()
    with open(texts_path(folder, split), "w", encoding="utf-8") as f:
        for rec in texts:
            f.write(
                json.dumps(
                    {"text_id": rec.text_id, "text": rec.text, "image_ids": list(rec.image_ids)}, ensure_ascii=False
                )
                + "\n"
            )
    return folder
