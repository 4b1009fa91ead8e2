"""The manifest of an ONNX export (``manifest.json``): what was exported, from which checkpoint, and its files.

A deployer reads it to feed the models (input names, shapes and dtypes, resolution, context
length, normalisation constants, logit scale); the ONNX backend reads it to refuse an export
that is damaged (file sizes and sha256), from another checkpoint (its sha256), or made for
another precision, opset or package version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from qaclip_harness.documents import key_text, read_json
from qaclip_harness.errors import ExportError

MANIFEST_NAME = "manifest.json"
FORMAT = "qaclip-onnx/1"
TOWERS = ("image", "text")
PathLike = Union[str, "os.PathLike[str]"]
# checks a fresh export folder against the eager model it came from; returns the manifest's "verification" record
Verifier = Callable[[Path, Any], dict[str, Any]]


@dataclass
class Manifest:
    """Everything needed to run, check and reproduce one export."""

    model: str
    arch: str
    precision: str
    opset: int
    checkpoint_sha256: str | None
    checkpoint_file: str | None
    resolution: int
    context_length: int
    embed_dim: int
    normalisation: dict[str, Any]
    logit_scale: float
    towers: dict[str, dict[str, Any]]  # tower -> {file, input {name, shape, dtype}, output {...}}
    files: dict[str, dict[str, Any]]  # file name -> {bytes, sha256}
    versions: dict[str, str]  # qaclip_core, torch, onnx, onnxscript, onnxruntime
    exporter: str
    verification: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def qaclip_version(self) -> str:
        """The qaclip_core version that wrote the export."""
        return self.versions.get("qaclip_core", "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, ``format`` first."""
        d = asdict(self)
        return {"format": d.pop("format"), **d}

    def write(self, directory: PathLike) -> Path:
        """Write ``manifest.json`` into ``directory`` (atomically)."""
        from qaclip_harness.files import atomic_write_json

        return atomic_write_json(Path(directory) / MANIFEST_NAME, self.to_dict(), indent=2, ensure_ascii=False)

    def verify_files(self, directory: PathLike) -> None:
        """Raise ExportError when a listed file is missing, of another size (truncated) or of another sha256.

        Every file is hashed in full (no ``.sha256`` record is trusted): a file rewritten with its
        size and modification time kept is caught.
        """
        from qaclip_core.pretrained import sha256_file

        directory = Path(directory)
        for tower in TOWERS:
            listed = self.towers[tower]["file"]
            if listed not in self.files:
                raise ExportError(
                    f"{directory / MANIFEST_NAME}: the {tower} model {listed!r} is not listed under 'files'"
                )
        for name, rec in self.files.items():
            path = directory / name
            if not path.is_file():
                raise ExportError(f"{path}: missing (listed in {directory / MANIFEST_NAME}); export again")
            size = path.stat().st_size
            if size != rec["bytes"]:
                what = "truncated" if size < rec["bytes"] else "longer than exported"
                raise ExportError(f"{path}: {size:,} bytes, the manifest lists {rec['bytes']:,} ({what}); export again")
            digest = sha256_file(path)
            if digest != rec["sha256"]:
                raise ExportError(
                    f"{path}: sha256 {digest}, the manifest lists {rec['sha256']} (corrupt); export again"
                )


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "arch": str,
    "precision": str,
    "opset": int,
    "resolution": int,
    "context_length": int,
    "embed_dim": int,
    "normalisation": dict,
    "logit_scale": (int, float),
    "towers": dict,
    "files": dict,
    "versions": dict,
    "exporter": str,
}


def _tower_ok(path: Path, tower: str, rec: Any) -> None:
    if not isinstance(rec, Mapping):
        raise ExportError(f"{path}: towers.{tower} must be a mapping, got {type(rec).__name__}")
    for key in ("file", "input", "output"):
        if key not in rec:
            raise ExportError(f"{path}: towers.{tower} lacks {key!r}")
    if not isinstance(rec["file"], str):
        raise ExportError(f"{path}: towers.{tower}.file must be a file name, got {rec['file']!r:.60}")
    for side in ("input", "output"):
        if not isinstance(rec[side], Mapping):
            raise ExportError(f"{path}: towers.{tower}.{side} must be a mapping, got {type(rec[side]).__name__}")
        for key in ("name", "shape", "dtype"):
            if key not in rec[side]:
                raise ExportError(f"{path}: towers.{tower}.{side} lacks {key!r}")


def read_manifest(directory: PathLike) -> Manifest:
    """The manifest of the export in ``directory``; ExportError naming the file and key when it is absent or malformed."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise ExportError(f"{directory}: no such export folder")
    if not path.is_file():
        raise ExportError(f"{path}: missing; {directory} is not a complete qaclip_core ONNX export")
    doc = read_json(path, ExportError)  # strict: a duplicate key, deep nesting, a bad byte named with the place
    if not isinstance(doc, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ExportError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    for key, kind in _REQUIRED.items():
        if key not in doc:
            raise ExportError(f"{path}: missing key {key!r}")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise ExportError(f"{path}: key {key!r} has type {type(doc[key]).__name__}")
    for key in ("checkpoint_sha256", "checkpoint_file"):
        doc.setdefault(key, None)
    for tower in TOWERS:
        if tower not in doc["towers"]:
            raise ExportError(f"{path}: towers lacks {tower!r}")
        _tower_ok(path, tower, doc["towers"][tower])
    for name, rec in doc["files"].items():
        if (
            not isinstance(rec, Mapping)
            or not isinstance(rec.get("bytes"), int)
            or not isinstance(rec.get("sha256"), str)
        ):
            raise ExportError(f"{path}: files.{key_text(name)} must hold 'bytes' (int) and 'sha256' (hex)")
        if Path(name).name != name or name in ("", ".", ".."):
            raise ExportError(f"{path}: files.{key_text(name)}: file names must not contain folders")
        if rec["bytes"] < 0 or isinstance(rec["bytes"], bool):
            raise ExportError(f"{path}: files.{key_text(name)}.bytes must be a size in bytes, got {rec['bytes']!r}")
    known = set(Manifest.__dataclass_fields__)
    unknown = set(doc) - known
    if unknown:
        raise ExportError(f"{path}: unknown keys {sorted(unknown)}")
    return Manifest(**doc)
