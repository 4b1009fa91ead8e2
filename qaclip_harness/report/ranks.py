"""Which queries changed rank between two runs, from the per-item predictions ``qaclip eval --dump-predictions`` writes.

Retrieval folders hold the reference's jsonl files (``<split>_predictions.jsonl``: per text its
ranked image ids; ``<split>_tr_predictions.jsonl``: per image its ranked text ids;
``<split>_texts.tr.jsonl``: per image its captions). A query's rank is the position (1-based) of
its first correct item in the ranked list, or None when none is in it. Zero-shot folders hold
``<dataset folder>.json`` in the ELEVATER format (per image the class probabilities): a changed
query is an image whose most probable class changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import read_json


@dataclass(frozen=True)
class Change:
    """One query whose rank or first answer differs between two runs."""

    direction: str  # t2i, i2t or zero-shot
    query: int
    before_rank: int | None
    after_rank: int | None
    before_top: int | None
    after_top: int | None

    def text(self) -> str:
        """One line: the query, its rank before and after, its first answer before and after."""

        def rank(r: int | None) -> str:
            return "-" if r is None else str(r)

        what = {"t2i": "text", "i2t": "image", "zero-shot": "image"}[self.direction]
        top = {"t2i": "image", "i2t": "text", "zero-shot": "class"}[self.direction]
        if self.direction == "zero-shot":
            return f"{what} {self.query}: predicted {top} {self.before_top} -> {self.after_top}"
        return (
            f"{self.direction} {what} {self.query}: rank of the first correct {top} {rank(self.before_rank)} -> "
            f"{rank(self.after_rank)} (first {top} {self.before_top} -> {self.after_top})"
        )


@dataclass
class RankDiff:
    """The queries of one case compared between two runs."""

    case: str
    compared: int = 0
    changes: list[Change] = field(default_factory=list)

    @property
    def better(self) -> int:
        """Queries whose correct item moved up."""
        return sum(1 for c in self.changes if _key(c.after_rank) < _key(c.before_rank))

    @property
    def worse(self) -> int:
        """Queries whose correct item moved down (or out of the list)."""
        return sum(1 for c in self.changes if _key(c.after_rank) > _key(c.before_rank))


def _key(rank: int | None) -> float:
    return float("inf") if rank is None else rank


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise QAClipError(f"cannot read the predictions {path}: {e.strerror or e}") from None
    for n, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                raise QAClipError(f"{path}, line {n}: not UTF-8") from None
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise QAClipError(f"{path}, line {n}: not JSON ({e.msg}, column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # more digits than Python converts, or nesting too deep
                raise QAClipError(f"{path}, line {n}: not JSON ({type(e).__name__})") from None
            if not isinstance(row, dict):
                raise QAClipError(f"{path}, line {n}: not JSON of a row (expected an object, got {type(row).__name__})")
            rows.append(row)
    return rows


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(row: dict, key: str, path: Path) -> int:
    value = _field(row, key, path)
    if not _is_id(value):
        raise QAClipError(f"{path}: a row's {key!r} is {value!r:.40}, expected an integer id")
    return value


def _ids(row: dict, key: str, path: Path) -> list[int]:
    value = _field(row, key, path)
    if not isinstance(value, list) or not all(_is_id(v) for v in value):
        raise QAClipError(f"{path}: a row's {key!r} is {value!r:.40}, expected a list of integer ids")
    return value


def _field(row: dict, key: str, path: Path) -> Any:
    if key not in row:
        raise QAClipError(f"{path}: a row has no {key!r} (expected the format qaclip eval --dump-predictions writes)")
    return row[key]


def _retrieval(folder: Path) -> dict[str, dict[int, tuple[int | None, int | None]]]:
    """direction -> query -> (rank of the first correct item, first item)."""
    gt_path = next(iter(sorted(folder.glob("*_texts.tr.jsonl"))), None)
    if gt_path is None:
        raise QAClipError(f"{folder}: no <split>_texts.tr.jsonl beside the predictions (the correct answers)")
    image_texts = {_id(r, "image_id", gt_path): set(_ids(r, "text_ids", gt_path)) for r in _jsonl(gt_path)}
    text_images: dict[int, set] = {}
    for image, texts in image_texts.items():
        for t in texts:
            text_images.setdefault(t, set()).add(image)
    out: dict[str, dict[int, tuple[int | None, int | None]]] = {"t2i": {}, "i2t": {}}
    for path in sorted(folder.glob("*_predictions.jsonl")):
        direction, qkey, lkey, truth = (
            ("i2t", "image_id", "text_ids", image_texts)
            if path.name.endswith("_tr_predictions.jsonl")
            else ("t2i", "text_id", "image_ids", text_images)
        )
        for row in _jsonl(path):
            query, ranked = _id(row, qkey, path), _ids(row, lkey, path)
            correct = truth.get(query, set())
            rank = next((i + 1 for i, item in enumerate(ranked) if item in correct), None)
            out[direction][query] = (rank, ranked[0] if ranked else None)
    return out


def _zeroshot(path: Path) -> dict[int, tuple[int | None, int | None]]:
    doc = read_json(path, QAClipError)
    probs = doc.get("predictions") if isinstance(doc, dict) else None
    rows = probs[0] if isinstance(probs, list) and probs else None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not isinstance(rows, list) or not all(isinstance(r, list) and all(number(v) for v in r) for r in rows):
        raise QAClipError(
            f"{path}: not an ELEVATER predictions file (expected {{'predictions': [[[probability, ...], ...]]}})"
        )
    return {i: (None, max(range(len(row)), key=row.__getitem__) if row else None) for i, row in enumerate(rows)}


def read_predictions(folder: Path) -> dict[str, dict[int, tuple[int | None, int | None]]]:
    """direction -> query -> (rank, first item) of one dumped predictions folder."""
    folder = Path(folder)
    if any(folder.glob("*_predictions.jsonl")):
        return _retrieval(folder)
    files = sorted(folder.glob("*.json"))
    if len(files) == 1:
        return {"zero-shot": _zeroshot(files[0])}
    raise QAClipError(
        f"{folder}: expected retrieval predictions (*_predictions.jsonl) or one zero-shot <dataset>.json, "
        f"found {len(files)} .json files"
    )


def rank_changes(case: str, before: Path, after: Path) -> RankDiff:
    """The queries of ``case`` whose rank or first answer differs between the folders ``before`` and ``after``."""
    a, b = read_predictions(before), read_predictions(after)
    diff = RankDiff(case)
    for direction in sorted(set(a) & set(b)):
        for query in sorted(set(a[direction]) & set(b[direction])):
            diff.compared += 1
            (ra, ta), (rb, tb) = a[direction][query], b[direction][query]
            if ra != rb or ta != tb:
                diff.changes.append(Change(direction, query, ra, rb, ta, tb))
    diff.changes.sort(
        key=lambda c: (-abs(min(_key(c.after_rank), 99) - min(_key(c.before_rank), 99)), c.direction, c.query)
    )
    return diff
