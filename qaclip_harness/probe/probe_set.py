"""Reading the probe set: every file checked against its pinned sha256 in MANIFEST.yaml, then decoded.

:func:`load_probe_set` reads every file the manifest lists, in its order, and checks each
against its sha256 first: a changed or missing file is a :class:`ProbeDataError` naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from PIL import Image

from qaclip_core.errors import QAClipError

PROBE_DIR = Path(__file__).parent
IMAGES_DIR = PROBE_DIR / "images"
MANIFEST = PROBE_DIR / "MANIFEST.yaml"
CAPTIONS = PROBE_DIR / "captions.json"
EXAMPLE_IMAGE = IMAGES_DIR / "pokemon.jpeg"


class ProbeDataError(QAClipError):
    """A probe-set file is missing, changed (sha256) or malformed."""


@dataclass(frozen=True)
class ProbeSet:
    """The probe images (decoded, in their file's own PIL mode) and captions, in manifest order."""

    image_names: tuple[str, ...]
    images: tuple[Image.Image, ...]
    captions: tuple[str, ...]
    digest: str  # sha256 over the manifest's names and digests: the identity of this probe set

    def image(self, name: str) -> Image.Image:
        """The image called ``name``."""
        if name not in self.image_names:
            raise ProbeDataError(f"the probe set has no image {name!r}; it has {', '.join(self.image_names)}")
        return self.images[self.image_names.index(name)]


def read_manifest(path: Path = MANIFEST) -> dict[str, dict[str, dict]]:
    """The manifest's ``images`` and ``files`` sections (name -> sha256, source, licence)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ProbeDataError(f"{path}: cannot read the probe manifest ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise ProbeDataError(f"{path}: expected a mapping with an 'images' section (name -> sha256, source, licence)")
    sections = {"images": doc["images"], "files": doc.get("files") or {}}
    for section, entries in sections.items():
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise ProbeDataError(f"{path}: {section}/{name} has no sha256")
    return sections


def read_pinned(path: Path, sha256: str) -> bytes:
    """The bytes of ``path``, after checking them against ``sha256``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProbeDataError(
            f"probe file {path} cannot be read ({type(e).__name__}: {e}); MANIFEST.yaml lists it"
        ) from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise ProbeDataError(
            f"probe file {path} has sha256 {actual}, but MANIFEST.yaml pins {sha256}: "
            "the file was changed or damaged (restore it, or regenerate and re-pin it)"
        )
    return data


def _decode(name: str, data: bytes) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))  # in memory: nothing to close; keeps .format
        im.load()
        return im
    except OSError as e:
        raise ProbeDataError(f"probe image {IMAGES_DIR / name} cannot be decoded: {e}") from e


def _captions(data: bytes, path: Path) -> tuple[str, ...]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProbeDataError(f"{path}: not UTF-8 JSON ({e})") from e
    caps = doc.get("captions") if isinstance(doc, dict) else None
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ProbeDataError(f"{path}: expected an object with a 'captions' list of strings")
    return tuple(caps)


def set_digest(sections: dict[str, dict[str, dict]]) -> str:
    """sha256 over every (section, name, sha256) of the manifest, in order."""
    h = hashlib.sha256()
    for section, entries in sections.items():
        for name, entry in entries.items():
            h.update(f"{section}/{name}={entry['sha256']}\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=4)
def load_probe_set(directory: Path = PROBE_DIR) -> ProbeSet:
    """Read and verify the probe set in ``directory`` (the package's own by default)."""
    directory = Path(directory)
    sections = read_manifest(directory / "MANIFEST.yaml")
    names, images = [], []
    for name, entry in sections["images"].items():
        names.append(name)
        images.append(_decode(name, read_pinned(directory / "images" / name, entry["sha256"])))
    if "captions.json" not in sections["files"]:
        raise ProbeDataError(f"{directory / 'MANIFEST.yaml'}: 'files' does not list captions.json")
    path = directory / "captions.json"
    captions = _captions(read_pinned(path, sections["files"]["captions.json"]["sha256"]), path)
    return ProbeSet(tuple(names), tuple(images), captions, set_digest(sections))


__all__ = [
    "CAPTIONS",
    "EXAMPLE_IMAGE",
    "IMAGES_DIR",
    "MANIFEST",
    "PROBE_DIR",
    "ProbeDataError",
    "ProbeSet",
    "load_probe_set",
    "read_manifest",
    "read_pinned",
    "set_digest",
]
