"""Model cards: which checkpoints exist, their architecture, and where to fetch them.

The published checkpoints' cards live in ``cards/models.yaml``; more card files can be added
with :func:`register_cards` (one file) or :func:`register_card_dir` (every ``*.yaml`` of a folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CardError, UnknownModelError

CARDS_DIR = Path(__file__).parent / "cards"
_CARD_DIRS: list[Path] = [CARDS_DIR]


@dataclass(frozen=True)
class ModelCard:
    """One published checkpoint."""

    name: str
    family: str
    display: str
    vision: str
    text: str
    resolution: int
    hub_repo: str | None = None
    hub_filename: str | None = None
    hub_revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes of the checkpoint file, pinned with sha256 (checked first: no hashing)
    checksum_source: str | None = None  # where sha256 and size were published
    params_m: float | None = None
    aliases: tuple[str, ...] = ()
    adapter: str = "native"
    protocol: str | None = None
    test_only: bool = False
    preprocessing: str | None = None  # transformers-format models: "reference" or "processor"
    original: str | None = None  # the native card of the same weights (a transformers-format copy's .pt)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def arch(self) -> str:
        """``VISION@TEXT`` architecture name."""
        return f"{self.vision}@{self.text}"

    @property
    def filename(self) -> str:
        """File name of the checkpoint in a download directory."""
        return self.hub_filename or f"{self.name}.pt"


_CARDS: dict[str, ModelCard] = {}
_ALIASES: dict[str, str] = {}
_KNOWN_KEYS = {
    "name",
    "family",
    "display",
    "vision",
    "text",
    "resolution",
    "hub",
    "url",
    "sha256",
    "size",
    "checksum_source",
    "params_m",
    "aliases",
    "adapter",
    "protocol",
    "test_only",
    "preprocessing",
    "original",
}


_REQUIRED = {"name", "family", "display", "vision", "text", "resolution"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "resolution": int,
    "size": int,
    "hub": dict,
    "params_m": (int, float),
    "aliases": list,
    "test_only": bool,
}


def _card_from_yaml(raw: object, source: Path, index: int = 0) -> ModelCard:
    if not isinstance(raw, dict):
        raise CardError(f"{source}: models[{index}] must be a mapping (a card), got {type(raw).__name__}")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise CardError(f"{source}: card {raw.get('name')!r} has unknown keys {sorted(map(str, unknown))}")
    missing = _REQUIRED - set(raw)
    if missing:
        raise CardError(f"{source}: card {raw.get('name')!r} lacks keys {sorted(missing)}")
    for key, value in raw.items():  # strings unless _TYPES says otherwise; an optional key may be null
        kind = _TYPES.get(key, str)
        if (value is None and key in _REQUIRED) or (
            value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool))
        ):
            raise CardError(
                f"{source}: models[{index}].{key} must be {getattr(kind, '__name__', 'a number')}, got {value!r:.60}"
            )
    hub = raw.get("hub") or {}
    if raw["resolution"] < 1 or not all(isinstance(v, str) for v in [*hub.values(), *(raw.get("aliases") or [])]):
        raise CardError(f"{source}: models[{index}]: resolution must be positive, hub values and aliases strings")
    if raw.get("preprocessing") not in (None, "reference", "processor"):
        raise CardError(
            f"{source}: card {raw.get('name')!r} has preprocessing {raw['preprocessing']!r}; "
            f"expected 'reference' or 'processor'"
        )
    sha256, size = raw.get("sha256"), raw.get("size")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise CardError(f"{source}: card {raw.get('name')!r}: sha256 must be 64 lower-case hex digits, got {sha256!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CardError(f"{source}: card {raw.get('name')!r}: size must be a positive number of bytes, got {size!r}")
    return ModelCard(
        name=raw["name"],
        family=raw["family"],
        display=raw["display"],
        vision=raw["vision"],
        text=raw["text"],
        resolution=int(raw["resolution"]),
        hub_repo=hub.get("repo"),
        hub_filename=hub.get("filename"),
        hub_revision=hub.get("revision"),
        url=raw.get("url"),
        sha256=sha256,
        size=size,
        checksum_source=raw.get("checksum_source"),
        params_m=raw.get("params_m"),
        aliases=tuple(raw.get("aliases") or ()),
        adapter=raw.get("adapter", "native"),
        protocol=raw.get("protocol"),
        test_only=bool(raw.get("test_only", False)),
        preprocessing=raw.get("preprocessing"),
        original=raw.get("original"),
    )


def register_cards(path: str | Path) -> list[ModelCard]:
    """Add the cards of a YAML file (``models: [...]``) to the registry."""
    _ensure_loaded()
    return _register_file(Path(path))


def register_card_dir(path: str | Path) -> None:
    """Add every ``*.yaml`` card file of a folder (once; the package's own cards stay first)."""
    path = Path(path).resolve()
    if path in _CARD_DIRS:
        return
    _CARD_DIRS.append(path)
    if _CARDS:  # already loaded: register this folder now; otherwise _ensure_loaded reads it in order
        for file in sorted(path.glob("*.yaml")):
            _register_file(file)


def load_card_file(path: str | Path) -> list[ModelCard]:
    """The cards of a YAML file (``models: [...]``), checked; CardError naming the file and the card otherwise."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as e:
        raise CardError(
            f"{path}: cannot be read as YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models", []), list):
        raise CardError(f"{path}: expected a mapping with a list under 'models'")
    return [_card_from_yaml(raw, path, i) for i, raw in enumerate(doc.get("models") or [])]


def _register_file(path: Path) -> list[ModelCard]:
    cards = load_card_file(path)
    for card in cards:
        if card.name in _CARDS or card.name in _ALIASES:
            raise CardError(f"{path}: model name {card.name!r} is registered twice")
        _CARDS[card.name] = card
        for alias in card.aliases:
            if alias in _CARDS or alias in _ALIASES:
                raise CardError(f"{path}: alias {alias!r} of {card.name!r} is already taken")
            _ALIASES[alias] = card.name
    return cards


def _ensure_loaded() -> None:
    if not _CARDS:
        # the package's models.yaml (the published checkpoints) first, then every added folder
        for folder in _CARD_DIRS:
            for path in sorted(folder.glob("*.yaml")):
                _register_file(path)


def all_cards(include_test_only: bool = True) -> list[ModelCard]:
    """Every registered card, in file order."""
    _ensure_loaded()
    return [c for c in _CARDS.values() if include_test_only or not c.test_only]


def available_models() -> list[str]:
    """Names ``load_from_name`` accepts: the QA-CLIP example's aliases first, then every native card."""
    _ensure_loaded()
    # The example prints ['ViT-B-16', 'ViT-L-14', 'RN50']: keep that order for the aliases.
    aliases = sorted(_ALIASES, key=lambda a: ("RN" in a, a))
    return aliases + [c.name for c in _CARDS.values() if not c.test_only and c.adapter == "native"]


def get_card(name: str) -> ModelCard:
    """The card registered under ``name`` or one of its aliases."""
    _ensure_loaded()
    key = _ALIASES.get(name, name)
    if key not in _CARDS:
        raise UnknownModelError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return _CARDS[key]
