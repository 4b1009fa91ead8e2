"""Content fingerprints of evaluation data, computed while the data is read (no second pass).

Each image's bytes are hashed by the thread that decodes it; the digests are then combined in a
fixed order (by image id, or relative path), so the fingerprint does not depend on the number of
threads, the batch size or the number of processes. Two folders with the same fingerprint hold the
same images under the same ids, the same captions and the same ground truth.

- retrieval: ``sha256("retrieval/v1" | images | texts)``, images = every (id, sha256(bytes)),
  texts = every (text_id, text, image_ids), each sorted by id;
- zero-shot: ``sha256("zeroshot/v1" | images | labels)``, images = every (relative path,
  sha256(bytes)) sorted by path, labels = the class names in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

Key = Union[int, str]


def item_digest(data: bytes) -> bytes:
    """sha256 of one item's bytes (raw digest)."""
    return hashlib.sha256(data).digest()


def images_digest(items: Iterable[tuple[Key, bytes | None]]) -> str:
    """Digest of (key, item digest) pairs, in key order; every item must have been read."""
    pairs = sorted(items, key=lambda kv: (isinstance(kv[0], str), kv[0]))
    missing = [k for k, d in pairs if d is None]
    if missing:
        raise ValueError(f"{len(missing)} images were not read (e.g. {missing[:3]}); no fingerprint")
    h = hashlib.sha256()
    for key, digest in pairs:
        assert digest is not None  # refused above
        h.update(f"{key}\0".encode())
        h.update(digest)
    return h.hexdigest()


def texts_digest(records: Iterable[tuple[int, str, Sequence[int]]]) -> str:
    """Digest of (text_id, text, image_ids) records, in text_id order."""
    h = hashlib.sha256()
    for text_id, text, image_ids in sorted(records, key=lambda r: r[0]):
        h.update(json.dumps([text_id, text, list(image_ids)], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def labels_digest(labels: Sequence[str]) -> str:
    """Digest of the class names, in order."""
    return hashlib.sha256("\n".join(labels).encode("utf-8")).hexdigest()


def combine(kind: str, parts: Mapping[str, str]) -> str:
    """The data fingerprint: ``kind`` and the named part digests, in name order."""
    h = hashlib.sha256(f"{kind}/v1".encode("ascii"))
    for name in sorted(parts):
        h.update(f"\0{name}={parts[name]}".encode("ascii"))
    return h.hexdigest()
