"""Dataset cards (``datasets.yaml`` beside this module, and a project's own): where each evaluation set lives and how to get it.

A project adds cards for data already on disk with :func:`register_datasets` (a YAML file of
``datasets: [...]``; docs/own-models.md): a retrieval set in Chinese-CLIP's layout (``lmdb/<split>/imgs``
and ``<split>_texts.jsonl``, as its fine-tuning scripts produce) or class folders (``<split>/<class>/``)
with a label file, at a ``path`` relative to the card file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaclip_harness.documents import key_text, read_yaml
from qaclip_harness.errors import DatasetError

CARDS_FILE = Path(__file__).resolve().parent / "datasets.yaml"


class DatasetMissingError(DatasetError):
    """The dataset is not on disk (and was not, or could not be, downloaded)."""


@dataclass(frozen=True)
class DatasetCard:
    """One evaluation dataset."""

    name: str
    display: str
    kind: str  # "retrieval" or "zeroshot"
    dirname: str
    split: str
    hub: dict | None = None
    url: str | None = None
    labels: dict | None = None
    how_to_get: str | None = None
    generator: str | None = None
    split_size: dict | None = None  # the published size of ``split``: images, texts or classes
    builds: dict | None = None  # name -> {archive, note, fingerprints}

    def build_of_archive(self, archive: str) -> str | None:
        """The build unpacked from ``archive`` (``repo/filename``), if one is listed."""
        for name, build in (self.builds or {}).items():
            if build.get("archive") == archive:
                return name
        return None

    def build_of_fingerprint(self, fingerprint: str) -> str | None:
        """The build whose data has ``fingerprint``, if one is listed."""
        for name, build in (self.builds or {}).items():
            if fingerprint in (build.get("fingerprints") or []):
                return name
        return None

    # ELEVATER (qaclip_harness/data/elevater.py): the folder layout to check, and the combined report
    # table the dataset's column belongs to (the class count is in split_size)
    layout: str | None = None
    report_table: str | None = None
    # a project's dataset card: the folder itself (absolute), and its own prompt templates file, if any
    location: str | None = None
    templates: str | None = None

    @property
    def downloadable(self) -> bool:
        """Whether ``--download`` can fetch the data itself."""
        return bool(self.hub)


_CARDS: dict[str, DatasetCard] = {}
_SOURCES: dict[str, Path] = {}  # dataset name -> the card file that registered it
_FILES: dict[Path, list[DatasetCard]] = {}
_FIELDS = set(DatasetCard.__dataclass_fields__)
ORIGIN_FILE = ".qaclip-origin.json"  # written into a folder unpacked by --download: which archive it came from


_REQUIRED = ("name", "display", "kind", "dirname", "split")
_MAPPINGS = {"hub", "labels", "split_size", "builds"}  # every other field is a string
_HUB = {"repo", "filename", "repo_type", "revision", "member", "size", "sha256"}
_LABELS = {"filename", "url", "sha256"}


def _one_name(value: object) -> bool:
    """A single folder or file name (of at most 255 bytes): never a path that could lead out of the data root."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and "\x00" not in value
        and len(value.encode("utf-8", "surrogatepass")) <= 255
    )


def _check_card(raw: object, where: str, path: Path) -> DatasetCard:
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: {where} must be a mapping (a dataset card), got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - _FIELDS)
    missing = [k for k in _REQUIRED if k not in raw]
    if unknown or missing:
        raise DatasetError(f"{path}: {where} ({raw.get('name')!r:.40}): unknown keys {unknown}, missing keys {missing}")
    for key, value in raw.items():
        kind = dict if key in _MAPPINGS else str
        if (value is not None or key in _REQUIRED) and not isinstance(value, kind):
            raise DatasetError(f"{path}: {where}.{key_text(key)} must be a {kind.__name__}, got {value!r:.60}")
    if raw["kind"] not in ("retrieval", "zeroshot"):
        raise DatasetError(f"{path}: {where}.kind must be retrieval or zeroshot, got {raw['kind']!r:.60}")
    for key in ("dirname", "split"):
        if not _one_name(raw[key]):
            raise DatasetError(f"{path}: {where}.{key} must be one folder name, got {raw[key]!r:.60}")
    hub, labels = raw.get("hub"), raw.get("labels")
    if hub is not None and (set(hub) - _HUB or not all(isinstance(hub.get(k), str) for k in ("repo", "filename"))):
        raise DatasetError(f"{path}: {where}.hub needs repo and filename (strings) and takes only {sorted(_HUB)}")
    if hub is not None and (not all(isinstance(v, str) for v in hub.values()) or not _one_name(hub["filename"])):
        raise DatasetError(f"{path}: {where}.hub values must be strings, its filename one file name")
    if hub is not None and hub.get("repo_type", "model") not in ("model", "dataset", "space"):
        raise DatasetError(f"{path}: {where}.hub.repo_type must be model, dataset or space")
    if hub is not None and "member" in hub and not _one_name(hub["member"]):
        raise DatasetError(f"{path}: {where}.hub.member must be one file name, got {hub['member']!r:.60}")
    if raw["kind"] == "zeroshot" and labels is None:
        raise DatasetError(f"{path}: {where}: a zero-shot dataset needs labels: {{filename: ...}}")
    if labels is not None and (
        set(labels) - _LABELS
        or not _one_name(labels.get("filename"))
        or not all(isinstance(v, str) for v in labels.values())
    ):
        raise DatasetError(f"{path}: {where}.labels needs filename (one file name) and takes only {sorted(_LABELS)}")
    for key, value in (raw.get("split_size") or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetError(
                f"{path}: {where}.split_size.{key_text(key)} must be a positive integer, got {value!r:.60}"
            )
    for name, build in (raw.get("builds") or {}).items():
        fingerprints = build.get("fingerprints") if isinstance(build, dict) else None
        if (
            not isinstance(build, dict)
            or set(build) - {"archive", "note", "fingerprints"}
            or not isinstance(fingerprints or [], list)
            or not all(isinstance(f, str) for f in fingerprints or [])
            or not isinstance(build.get("archive", ""), str)
        ):
            raise DatasetError(
                f"{path}: {where}.builds.{key_text(name)} must be {{archive: <repo/file>, note: ..., fingerprints: "
                "[<sha256>...]}"
            )
    return DatasetCard(**raw)


def load_dataset_cards(path: str | Path) -> list[DatasetCard]:
    """The dataset cards of a YAML file (``datasets: [...]``), read strictly and checked."""
    path = Path(path)
    doc = read_yaml(path, DatasetError)
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise DatasetError(f"{path}: expected a mapping with a list of cards under 'datasets'")
    cards = [_check_card(raw, f"datasets[{i}]", path) for i, raw in enumerate(doc["datasets"])]
    names = [c.name for c in cards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetError(f"{path}: dataset name(s) {twice} given twice")
    return cards


def all_datasets() -> list[DatasetCard]:
    """Every dataset card, in file order (the package's, then a project's)."""
    if not _CARDS:
        for card in load_dataset_cards(CARDS_FILE):
            _CARDS[card.name] = card
            _SOURCES[card.name] = CARDS_FILE
    return list(_CARDS.values())


PROJECT_KEYS = ("name", "kind", "path", "split", "display", "labels", "split_size", "templates")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SIZES = {"retrieval": ("images", "texts"), "zeroshot": ("images", "classes")}


def dataset_source(name: str) -> Path | None:
    """The card file that registered dataset ``name``."""
    all_datasets()
    return _SOURCES.get(name)


def _project_card(raw: Any, index: int, path: Path) -> DatasetCard:
    """One dataset card of a project's file, every key checked; a DatasetError names the file and the key."""
    where = f"{path}: datasets[{index}]"
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} must be a mapping of keys ({', '.join(PROJECT_KEYS)}), got {raw!r:.60}")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"{path}: dataset {name!r}"
    unknown = sorted(set(raw) - set(PROJECT_KEYS))
    if unknown:
        raise DatasetError(f"{where} has unknown keys {unknown} (known: {', '.join(PROJECT_KEYS)})")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasetError(
            f"{where}: name must be lower-case letters, digits and . _ - (it starts each case id), got {name!r}"
        )
    kind = raw.get("kind")
    if kind not in _SIZES:
        raise DatasetError(
            f"{where}: kind must be retrieval (Chinese-CLIP's LMDB layout) or zeroshot (class folders), got {kind!r}"
        )
    folder = raw.get("path")
    if not isinstance(folder, str) or not folder.strip():
        raise DatasetError(f"{where}: path must name the dataset's folder (relative to the card file), got {folder!r}")
    location = (path.parent / Path(folder).expanduser()).resolve()
    split = raw.get("split", "test")
    if not isinstance(split, str) or not split or "/" in split:
        raise DatasetError(f"{where}: split must be a folder name (test, valid...), got {split!r}")
    sizes = raw.get("split_size")
    if sizes is not None:
        allowed = _SIZES[kind]
        if (
            not isinstance(sizes, dict)
            or set(sizes) - set(allowed)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes.values())
        ):
            raise DatasetError(
                f"{where}: split_size must map {' and '.join(allowed)} to positive counts, got {sizes!r:.80}"
            )
    labels = raw.get("labels")
    if kind == "zeroshot":
        if not isinstance(labels, str) or not labels.strip():
            raise DatasetError(
                f"{where}: labels must name the label file (one class name per line, relative to the card file)"
            )
        labels_info: dict | None = {"filename": str((path.parent / Path(labels).expanduser()).resolve())}
    elif labels is not None:
        raise DatasetError(f"{where}: labels applies to zeroshot datasets only")
    else:
        labels_info = None
    templates = raw.get("templates")
    if templates is not None:
        if kind != "zeroshot" or not isinstance(templates, str) or not templates.strip():
            raise DatasetError(f"{where}: templates must name a file of prompt templates (zeroshot datasets only)")
        templates = str((path.parent / Path(templates).expanduser()).resolve())
    display = raw.get("display", name)
    return DatasetCard(
        name=name,
        display=str(display),
        kind=kind,
        dirname=location.name,
        split=split,
        labels=labels_info,
        split_size=dict(sizes) if sizes else None,
        how_to_get=f"the dataset card {path} names this folder: put the data there or change the card's path",
        location=str(location),
        templates=templates,
    )


def register_datasets(path: str | Path) -> list[DatasetCard]:
    """Add a project's dataset cards (a YAML file of ``datasets: [...]``); a file registered before is not read again."""
    path = Path(path).resolve()
    all_datasets()
    if path in _FILES:
        return _FILES[path]
    doc = read_yaml(path, DatasetError)  # strict: a key given twice, deep nesting or bad bytes are refused
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list) or set(doc) - {"datasets"}:
        raise DatasetError(f"{path}: expected one key, datasets: [<dataset card>, ...]")
    cards = [_project_card(raw, i, path) for i, raw in enumerate(doc["datasets"])]
    seen: dict[str, Path] = {}
    for card in cards:
        other = _SOURCES.get(card.name) or seen.get(card.name)
        if other is not None:
            built_in = " (a built-in dataset)" if other == CARDS_FILE else ""
            raise DatasetError(f"{path}: dataset {card.name!r}: the name is already taken by {other}{built_in}")
        seen[card.name] = path
    for card in cards:
        _CARDS[card.name] = card
        _SOURCES[card.name] = path
    _FILES[path] = cards
    return cards


def read_origin(folder: Path) -> dict | None:
    """The archive a dataset folder was unpacked from (``{"archive", "sha256"}``), if --download did it."""
    try:
        doc = json.loads((Path(folder) / ORIGIN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None  # a record that is not one says nothing


def identify_build(card: DatasetCard, folder: Path, fingerprint: str | None) -> str | None:
    """The named build of ``card`` this data is: by its fingerprint, else by the archive it came from.

    A fingerprint listed under another dataset's build is an error: the data is in the wrong place.
    """
    if fingerprint:
        build = card.build_of_fingerprint(fingerprint)
        if build:
            return build
        for other in all_datasets():
            if other.name != card.name and other.build_of_fingerprint(fingerprint):
                raise DatasetError(
                    f"the data in {folder} is {other.display} (build {other.build_of_fingerprint(fingerprint)!r}, "
                    f"fingerprint {fingerprint[:16]}...), not {card.display}: it sits in the wrong folder"
                )
    origin = read_origin(folder)
    if origin and origin.get("archive"):
        return card.build_of_archive(origin["archive"])
    return None


def get_dataset(name: str) -> DatasetCard:
    """The card of dataset ``name``."""
    cards = {c.name: c for c in all_datasets()}
    if name not in cards:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(cards)}")
    return cards[name]


def datasets_dir(data_root: str | Path) -> Path:
    """``<root>/datasets`` if it exists (Chinese-CLIP's ${DATAPATH}), else ``<root>`` itself."""
    root = Path(data_root).expanduser()
    return root / "datasets" if (root / "datasets").is_dir() or not root.is_dir() else root


def dataset_dir(card: DatasetCard, data_root: str | Path) -> Path:
    """Folder of ``card`` under ``data_root`` (a project's card names its folder itself)."""
    if card.location is not None:
        return Path(card.location)
    return datasets_dir(data_root) / card.dirname


def is_present(card: DatasetCard, folder: Path) -> bool:
    if card.kind == "retrieval":
        return (folder / "lmdb" / card.split / "imgs").is_dir() and (folder / f"{card.split}_texts.jsonl").is_file()
    return (folder / card.split).is_dir() and (
        not _labels_inside(card) or (folder / (card.labels or {})["filename"]).is_file()
    )


def _labels_inside(card: DatasetCard) -> bool:
    """Whether the label file comes with the dataset's folder (ELEVATER) rather than fetched on its own."""
    return card.layout == "elevater" and bool(card.labels)


def missing_parts(card: DatasetCard, folder: Path) -> list:
    """The parts of the dataset that are absent from ``folder`` (paths relative to it)."""
    if card.kind == "retrieval":
        parts = [f"lmdb/{card.split}/imgs", f"{card.split}_texts.jsonl"]
        present = [(folder / parts[0]).is_dir(), (folder / parts[1]).is_file()]
    else:
        parts, present = [f"{card.split}/<class folders>"], [(folder / card.split).is_dir()]
        if _labels_inside(card):
            parts.append((card.labels or {})["filename"])
            present.append((folder / (card.labels or {})["filename"]).is_file())
    return [p for p, ok in zip(parts, present) if not ok]


def missing_reason(card: DatasetCard, data_root: str | Path) -> str:
    """One line: what is missing, where it was expected, how to get it."""
    folder = dataset_dir(card, data_root)
    how = "run with --download" if card.downloadable else (card.how_to_get or "see the README")
    if card.hub and card.hub.get("member"):  # a zip inside a larger zip (ELEVATER_all.zip)
        how = nested_how_to_get(card, datasets_dir(data_root))
    if not folder.is_dir():
        return f"{card.display} not found: no folder {folder}; {how}"
    missing = missing_parts(card, folder)
    return f"{card.display} in {folder} is incomplete: {' and '.join(missing)} missing; {how}"


def nested_how_to_get(card: DatasetCard, datasets_folder: Path) -> str:
    """Where to get a nested dataset and where to put it, in one line."""
    hub = card.hub or {}
    size = f" ({hub['size']})" if hub.get("size") else ""
    where = f"the Hugging Face dataset {hub['repo']}" + (f" or {card.url}" if card.url else "")
    return (
        f"run with --download (fetches {hub['filename']}{size} once from {where} and unpacks only {hub['member']}), "
        f"or unzip {hub['member']} from {hub['filename']} into {datasets_folder}/ so that "
        f"{datasets_folder / card.dirname}/{card.split}/ and label_cn.txt exist"
    )


@dataclass(frozen=True)
class DatasetOnDisk:
    """A dataset resolved to local paths: what the evaluation reads (it never downloads)."""

    card: DatasetCard
    folder: Path  # <datasets>/<dirname>
    labels: Path | None = None  # the zero-shot label file

    @property
    def datasets_folder(self) -> Path:
        """The folder holding this dataset's folder (Chinese-CLIP's ``${DATAPATH}/datasets``)."""
        return self.folder.parent


def locate(card: DatasetCard, data_root: str | Path) -> DatasetOnDisk:
    """``card``'s data under ``data_root`` as it is on disk; DatasetMissingError (with how to get it) when incomplete."""
    folder = dataset_dir(card, data_root)
    if not is_present(card, folder):
        raise DatasetMissingError(missing_reason(card, data_root))
    labels = None
    if card.kind == "zeroshot":
        labels = folder / (card.labels or {})["filename"]
        if not labels.is_file():
            how = "run with --download" if (card.labels or {}).get("url") else "generate or place it there"
            raise DatasetMissingError(f"{card.display} label file {labels} not found; {how}")
    return DatasetOnDisk(card, folder, labels)
