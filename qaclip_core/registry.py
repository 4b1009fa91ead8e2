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
    checkpoint: str | None = None  # a local file or folder (absolute), instead of hub or url
    sha256: str | None = None
    size: int | None = None  # bytes of the checkpoint file, pinned with sha256 (checked first: no hashing)
    checksum_source: str | None = None  # where sha256 and size were published
    params_m: float | None = None
    aliases: tuple[str, ...] = ()
    adapter: str = "native"  # the backend: a name of the entry-point group qaclip.backends, or module:attribute
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
_SOURCES: dict[str, Path] = {}  # card or alias -> the file that registered it
_FILES: dict[Path, list[ModelCard]] = {}  # every card file registered, once
_KNOWN_KEYS = {
    "name",
    "family",
    "display",
    "vision",
    "text",
    "arch",
    "resolution",
    "hub",
    "url",
    "checkpoint",
    "sha256",
    "size",
    "checksum_source",
    "params_m",
    "aliases",
    "adapter",
    "backend",
    "protocol",
    "test_only",
    "preprocessing",
    "original",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


# a key's type when it is not a string (an optional key may be null)
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
        raise CardError(f"{source}: models[{index}] must be a mapping (a card), got {type(raw).__name__} {raw!r:.60}")
    where = f"{source}: card {raw.get('name')!r}"
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise CardError(
            f"{where} has unknown keys {sorted(map(str, unknown))} (known: {', '.join(sorted(_KNOWN_KEYS))})"
        )
    for key, value in raw.items():
        kind = _TYPES.get(key, str)
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            raise CardError(
                f"{source}: models[{index}].{key} must be {getattr(kind, '__name__', 'a number')}, got {value!r:.60}"
            )
    hub_values = (raw.get("hub") or {}).values()
    if not all(isinstance(v, str) for v in [*hub_values, *(raw.get("aliases") or [])]):
        raise CardError(f"{source}: models[{index}]: hub values and aliases must be strings")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CardError(f"{where}: name must be letters, digits and . _ + - (it becomes a test id), got {name!r}")
    if "adapter" in raw and "backend" in raw:
        raise CardError(f"{where}: give backend or its older spelling adapter, not both")
    backend = raw.get("backend", raw.get("adapter", "native"))
    if not isinstance(backend, str) or not backend:
        raise CardError(f"{where}: backend must be a backend name or module:attribute, got {backend!r}")
    raw = dict(raw)
    if "arch" in raw:
        arch = raw.pop("arch")
        if "vision" in raw or "text" in raw or not isinstance(arch, str) or arch.count("@") != 1:
            raise CardError(f"{where}: arch must be VISION@TEXT (and replaces vision and text), got {arch!r}")
        raw["vision"], raw["text"] = arch.split("@")
    if backend == "native":  # the core builds the model: its towers must exist, and fix the resolution
        from .model.config import arch_config

        if "vision" not in raw or "text" not in raw:
            raise CardError(f"{where} needs arch: VISION@TEXT (or vision and text), or a backend that builds it")
        try:
            config = arch_config(f"{raw.get('vision')}@{raw.get('text')}")
        except (KeyError, ValueError) as e:
            raise CardError(f"{where}: arch (or vision and text): {e.args[0] if e.args else e}") from None
        raw.setdefault("resolution", config.vision.image_size)
    if raw.get("preprocessing") not in (None, "reference", "processor"):
        raise CardError(f"{where} has preprocessing {raw['preprocessing']!r}; expected 'reference' or 'processor'")
    sha256, size = raw.get("sha256"), raw.get("size")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise CardError(f"{where}: sha256 must be 64 lower-case hex digits, got {sha256!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CardError(f"{where}: size must be a positive number of bytes, got {size!r}")
    hub = raw.get("hub") or {}
    if not isinstance(hub, dict) or set(hub) - {"repo", "filename", "revision"}:
        raise CardError(f"{where}: hub must be {{repo, filename, revision}}, got {hub!r:.80}")
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str) or not checkpoint.strip() or hub or raw.get("url"):
            raise CardError(f"{where}: checkpoint must be one local path (instead of hub or url), got {checkpoint!r}")
        checkpoint = str((source.parent / Path(checkpoint).expanduser()).resolve())  # relative to the card file
    resolution = raw.get("resolution", 0)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 0:
        raise CardError(f"{where}: resolution must be a number of pixels, got {resolution!r}")
    return ModelCard(
        name=name,
        family=str(raw.get("family", "custom")),
        display=str(raw.get("display", name)),
        vision=str(raw.get("vision", "")),
        text=str(raw.get("text", "")),
        resolution=resolution,
        hub_repo=hub.get("repo"),
        hub_filename=hub.get("filename"),
        hub_revision=hub.get("revision"),
        url=raw.get("url"),
        checkpoint=checkpoint,
        sha256=sha256,
        size=size,
        checksum_source=raw.get("checksum_source"),
        params_m=raw.get("params_m"),
        aliases=tuple(raw.get("aliases") or ()),
        adapter=backend,
        protocol=raw.get("protocol"),
        test_only=bool(raw.get("test_only", False)),
        preprocessing=raw.get("preprocessing"),
        original=raw.get("original"),
    )


def register_cards(path: str | Path) -> list[ModelCard]:
    """Add the cards of a YAML file (``models: [...]``) to the registry (a file registered before is not read again)."""
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
    except yaml.MarkedYAMLError as e:
        at = f" at line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise CardError(f"{path}: is not valid YAML{at}: {e.problem or e}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as e:
        raise CardError(
            f"{path}: cannot be read as YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models", []), list):
        raise CardError(f"{path}: expected a mapping with a list under 'models' (models: [<card>, ...])")
    return [_card_from_yaml(raw, path, i) for i, raw in enumerate(doc.get("models") or [])]


def card_source(name: str) -> Path | None:
    """The card file that registered ``name`` (a card name or alias)."""
    return _SOURCES.get(name)


def _register_file(path: Path) -> list[ModelCard]:
    path = path.resolve()
    if path in _FILES:
        return _FILES[path]
    cards = load_card_file(path)
    taken: dict[str, Path] = {}
    for card in cards:
        for label in (card.name, *card.aliases):
            if label in _SOURCES or label in taken:
                other = _SOURCES.get(label) or taken[label]
                raise CardError(f"{path}: card {card.name!r}: name {label!r} is already taken by {other}")
            taken[label] = path
    for card in cards:
        _CARDS[card.name] = card
        _SOURCES[card.name] = path
        for alias in card.aliases:
            _ALIASES[alias] = card.name
            _SOURCES[alias] = path
    _FILES[path] = cards
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
