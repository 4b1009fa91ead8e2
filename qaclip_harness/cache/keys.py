"""What names a cached result: the digest of the source on the feature path, library versions, the key itself.

A key is the sha256 of a canonical JSON document of every field that can change the cached
bytes; the document itself is kept beside the entry, so a miss can be explained field by field.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import qaclip_core
import qaclip_harness

_CORE = Path(qaclip_core.__file__).resolve().parent
_HARNESS = Path(qaclip_harness.__file__).resolve().parent
# Everything that turns an image or a caption into a feature: the core (model, tokenizer,
# preprocessing, checkpoint loading, cards), the readers and the loader, the encoding loop and the
# zero-shot classifier, every backend with its export and conversion, this package, the harness's
# model cards and tower configs, and the one normalisation. Left out on purpose: metrics, gates, expected numbers, the report, the suite and
# the CLI, which work on features and never change them, so a change there reuses the cache.
FEATURE_PATH = (
    (_CORE, "."),
    (_HARNESS, "data"),
    (_HARNESS, "eval"),
    (_HARNESS, "backends"),
    (_HARNESS, "export"),
    (_HARNESS, "convert"),
    (_HARNESS, "cache"),
    (_HARNESS, "cards"),
    (_HARNESS, "fixture/configs"),  # the fixture towers' configs: a head width changes features, not weight shapes
    (_HARNESS, "tensors.py"),
)
_SOURCE_SUFFIXES = (".py", ".json", ".yaml", ".txt")
SCHEMA = 1  # bumped when the layout of an entry changes


def source_files(parts: Iterable = FEATURE_PATH) -> dict[str, Path]:
    """Every source file of ``parts`` ((package folder, relative path) pairs), by its path relative to the package."""
    files: dict[str, Path] = {}
    for base, rel in parts:
        target = (base / rel).resolve()
        found = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for path in found:
            if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                files[f"{base.name}/{path.relative_to(base).as_posix()}"] = path
    return files


def digest_files(files: Mapping[str, Path]) -> str:
    """sha256 over (name, bytes) of each file, in name order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name].read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@cache
def feature_path_digest() -> str:
    """sha256 of the source of every module on the feature path (computed once per process)."""
    return digest_files(source_files())


def foreign_source_digest(obj: object) -> str | None:
    """sha256 of the source of the package ``obj``'s class comes from, when that is not this project's (else None).

    A project's own encoder (a backend registered by another package, or named by ``module:attribute``)
    is on the feature path too: an edit of its package must recompute features, as an edit of ours does.
    """
    import sys

    module = sys.modules.get(type(obj).__module__)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.is_file():
        return None
    path = path.resolve()
    if _CORE in path.parents or _HARNESS in path.parents:
        return None
    top = sys.modules.get(type(obj).__module__.split(".")[0])
    top_file = Path(getattr(top, "__file__", "") or "")
    if top_file.name == "__init__.py" and top_file.is_file():  # a package: all of it
        root = top_file.resolve().parent
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
    else:
        files = {path.name: path}
    return digest_files(files)


def module_digest(*modules: object) -> str:
    """sha256 of the source files of the given modules (a reader's decoding is part of a pixel key)."""
    files = {}
    for module in modules:
        path = Path(getattr(module, "__file__", "") or "")
        if path.is_file():
            files[f"{getattr(module, '__name__', path.name)}"] = path
    return digest_files(files)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries whose kernels and codecs produce features: torch, Pillow, ONNX Runtime and more."""
    return {name: _version(name) for name in ("torch", "torchvision", "Pillow", "numpy", "onnxruntime", "transformers")}


def device_kind(device: object) -> str:
    """``cpu``, or ``cuda <GPU name>``: two GPUs of one model compute the same features, two models may not."""
    import torch

    dev = torch.device(str(device))
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())}"
    return dev.type


def numeric_settings() -> dict[str, object]:
    """TF32, cuDNN algorithm choice, determinism and threads: settings that change a feature's low bits."""
    from qaclip_harness.environment import numeric_settings as settings

    return settings()


def make_key(fields: Mapping[str, object]) -> str:
    """The key of an entry: sha256 of the canonical JSON of ``fields``."""
    text = json.dumps(
        {"schema": SCHEMA, **fields}, sort_keys=True, ensure_ascii=True, default=str, separators=(",", ":")
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()
