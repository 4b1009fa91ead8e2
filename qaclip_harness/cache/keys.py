"""What names a cached result: the project's source, the libraries, the device, the numeric settings, the key itself.

A key is the sha256 of a canonical JSON document of every field the run can name that can
change the cached bytes; the document is kept beside the entry, so a miss can be explained field
by field. What a key cannot name (a patched attribute, a variable nobody listed) is the canary's
job (:mod:`qaclip_harness.eval.canary`): every reuse recomputes it and requires the stored one.

The source digest covers every file of ``qaclip_core`` and ``qaclip_harness`` except the inert
ones of ``keys.yaml`` (each shown by ``tests/harness/test_cache_keys.py`` never to run while a
model is loaded, data is read or features are made), and every other Python module the process
has loaded from outside an installed distribution: ``conftest.py`` files, ``benchmarks/``, plugins.
Names in it are relative (``qaclip_core/transforms.py``, ``benchmarks.conftest``), so two copies of
one tree in different folders have one key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

import qaclip_core
import qaclip_harness

_CORE = Path(qaclip_core.__file__).resolve().parent
_HARNESS = Path(qaclip_harness.__file__).resolve().parent
PACKAGES = (_CORE, _HARNESS)
KEYS_FILE = Path(__file__).with_name("keys.yaml")
_SOURCE_SUFFIXES = (".py", ".json", ".yaml", ".txt")
# Libraries whose kernels, codecs or exporters produce the cached bytes.
LIBRARIES = (
    "torch",
    "torchvision",
    "Pillow",
    "numpy",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "safetensors",
    "lmdb",
)
# CPU features that pick vector kernels (oneDNN, MKL, ATen dispatch) and so the low bits of a result.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
ISA_PREFIXES = ("avx512_", "amx")
SCHEMA = 2  # bumped when the layout of an entry changes


@cache
def key_rules() -> dict[str, dict[str, str]]:
    """``keys.yaml``: the inert files and the numeric environment variables, each with why."""
    doc = yaml.safe_load(KEYS_FILE.read_text(encoding="utf-8"))
    return {"inert": dict(doc.get("inert") or {}), "environment": dict(doc.get("environment") or {})}


def _package_name(path: Path) -> str | None:
    """``qaclip_core/x.py`` for a file of one of the packages, else None."""
    for base in PACKAGES:
        if path.is_relative_to(base):
            return f"{base.name}/{path.relative_to(base).as_posix()}"
    return None


def is_inert(name: str) -> bool:
    """Whether the package file ``name`` (``qaclip_harness/metrics/retrieval.py``) is left out of the source digest."""
    return any(name == rule or (rule.endswith("/") and name.startswith(rule)) for rule in key_rules()["inert"])


def package_files(bases: Iterable[Path] = PACKAGES, inert: bool = False) -> dict[str, Path]:
    """Every source file of the packages by relative name; the inert ones only when ``inert``."""
    files: dict[str, Path] = {}
    for base in bases:
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                name = f"{base.name}/{path.relative_to(base).as_posix()}"
                if inert or not is_inert(name):
                    files[name] = path
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
def package_digest() -> str:
    """sha256 of every non-inert source file of qaclip_core and qaclip_harness (once per process)."""
    return digest_files(package_files())


@cache
def _distribution_roots() -> tuple[Path, ...]:
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(Path(p).resolve() for p in paths if p)


@cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outside_modules() -> dict[str, Path]:
    """Python modules loaded now from outside the packages and outside any installed distribution, by module name."""
    roots = _distribution_roots()
    found: dict[str, Path] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or not str(file).endswith(".py"):
            continue
        path = Path(file).resolve()
        if not path.is_file() or _package_name(path) is not None or any(path.is_relative_to(r) for r in roots):
            continue
        found[name] = path
    return found


def source_digest() -> dict[str, str]:
    """The project's source in a key: the packages' non-inert files and every loaded module from outside them."""
    outside = outside_modules()
    h = hashlib.sha256()
    for name in sorted(outside):
        h.update(f"{name}\0{_file_digest(outside[name])}\n".encode())
    return {"packages": package_digest(), "outside": h.hexdigest(), "modules": ",".join(sorted(outside))}


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
    """The versions of Python, qaclip_core and the libraries whose kernels and codecs produce features."""
    return {
        "python": platform.python_version(),
        "qaclip_core": qaclip_core.__version__,
        **{name: _version(name) for name in LIBRARIES},
    }


def device_kind(device: object) -> str:
    """``cpu``, or ``cuda <GPU name> sm<major><minor>``: two GPUs of one model compute the same features, two models may not."""
    import torch

    dev = torch.device(str(device))
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor}"
    return dev.type


def numeric_environment() -> dict[str, str]:
    """The environment variables of ``keys.yaml`` that are set, with their values (locations left out)."""
    rules = key_rules()["environment"]
    names = [n for n in rules if not n.endswith("_")]
    prefixes = tuple(n for n in rules if n.endswith("_"))
    out = {}
    for name, value in os.environ.items():
        if name in names or (name.startswith(prefixes) and not name.endswith(("_DIR", "_PATH", "_FILE", "_LOG"))):
            out[name] = value
    return dict(sorted(out.items()))


@cache
def cpu_features() -> dict[str, Any]:
    """The CPU's instruction-set features that pick vector kernels, and ATen's dispatch level."""
    import torch

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = sorted(f for f in flags if f in ISA_FLAGS or f.startswith(ISA_PREFIXES))
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None
    return {"machine": platform.machine(), "aten": capability, "isa": isa}


def numeric_settings() -> dict[str, object]:
    """Every torch setting that changes a feature's low bits: TF32, reduced-precision reductions, attention kernels..."""
    import torch

    from qaclip_harness.environment import numeric_settings as settings

    cuda = torch.backends.cuda
    out: dict[str, object] = {
        **settings(),
        "fp16_reduced_precision_reduction": bool(cuda.matmul.allow_fp16_reduced_precision_reduction),
        "bf16_reduced_precision_reduction": bool(cuda.matmul.allow_bf16_reduced_precision_reduction),
        "sdp_flash": bool(cuda.flash_sdp_enabled()),
        "sdp_mem_efficient": bool(cuda.mem_efficient_sdp_enabled()),
        "sdp_math": bool(cuda.math_sdp_enabled()),
        "cudnn_enabled": bool(torch.backends.cudnn.enabled),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "default_dtype": str(torch.get_default_dtype()),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if hasattr(cuda, "cudnn_sdp_enabled"):
        out["sdp_cudnn"] = bool(cuda.cudnn_sdp_enabled())
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def run_environment() -> dict[str, object]:
    """Everything about the process a key names besides the model and the data: source, libraries, CPU, numerics."""
    return {
        "source": source_digest(),
        "versions": library_versions(),
        "cpu": cpu_features(),
        "numerics": numeric_settings(),
        "environment": numeric_environment(),
    }


def canonical(fields: Mapping[str, object]) -> str:
    """The canonical JSON of ``fields`` (the text a key hashes)."""
    return json.dumps(
        {"schema": SCHEMA, **fields}, sort_keys=True, ensure_ascii=True, default=str, separators=(",", ":")
    )


def make_key(fields: Mapping[str, object]) -> str:
    """The key of an entry: sha256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(canonical(fields).encode("ascii")).hexdigest()


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the fields in which ``a`` and ``b`` differ (why a key moved)."""
    out = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += differing_fields(x, y, f"{prefix}{name}.")
        elif json.dumps(x, sort_keys=True, default=str) != json.dumps(y, sort_keys=True, default=str):
            out.append(f"{prefix}{name}")
    return out
