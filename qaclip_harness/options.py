"""Validation of user options, shared by the CLI (argparse types) and the suite (checked at configure time).

Each check raises :class:`OptionError` with one line naming the option, the value and what was
expected, before any model is built or any data is read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from qaclip_core.errors import QAClipError

PRECISIONS = ("fp32", "fp16", "bf16")
RESUME_CHUNK_IMAGES = 2048  # a GPU encodes this in seconds; ImageNet's 50,000 images are 25 chunks


class OptionError(QAClipError, ValueError):
    """An option value that cannot work: ``str()`` is ``'<option> <value>: <detail>'``."""

    def __init__(self, option: str, value: object, detail: str):
        super().__init__(f"{option} {str(value)!r}: {detail}")
        self.option, self.value, self.detail = option, value, detail


def device(value: str, option: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against the devices this machine has."""
    import torch

    text = str(value).strip().lower()
    if text in ("auto", "cpu"):
        return text
    if text == "cuda" or text.startswith("cuda:"):
        index = text[5:] if text.startswith("cuda:") else "0"
        if not index.isdigit():
            raise OptionError(option, value, "expected auto, cpu, cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise OptionError(
                option,
                value,
                f"this machine has no CUDA device "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu",
            )
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise OptionError(option, value, f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return text
    raise OptionError(option, value, "expected auto, cpu, cuda or cuda:N")


def precision(value: str, option: str = "--precision") -> str:
    """One of fp32, fp16, bf16."""
    if value not in PRECISIONS:
        raise OptionError(option, value, f"expected one of {', '.join(PRECISIONS)}")
    return value


def _integer(value: str | int, option: str, minimum: int, expected: str, below: str) -> int:
    """``value`` as an integer of at least ``minimum``: ``expected`` when it is not an integer, ``below`` when smaller."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise OptionError(option, value, expected) from None
    if n < minimum:
        raise OptionError(option, value, below)
    return n


def positive_int(value: str | int, option: str) -> int:
    """An integer of at least 1."""
    return _integer(value, option, 1, "expected a positive integer", "expected a positive integer (at least 1)")


def count(value: str | int, option: str) -> int:
    """An integer of at least 0."""
    return _integer(value, option, 0, "expected an integer >= 0", "expected an integer >= 0")


def folder(value: str | Path | None, option: str, must_exist: bool = False) -> Path | None:
    """A folder path: it may be absent (it is created when needed) unless ``must_exist``, but never a file."""
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise OptionError(option, value, f"expected a folder, but {path} is a file")
    if must_exist and not path.is_dir():
        raise OptionError(option, value, f"the folder {path} does not exist")
    return path


def _probe_writable(path: Path, option: str, value: object, label: str) -> None:
    """Create a throw-away file in ``path`` now: a folder that cannot be written fails before any work."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".qaclip-write-test-"):
            pass
    except OSError as e:
        raise OptionError(option, value, f"{label} is not writable ({e.strerror or e})") from None


def new_output_folder(value: str | Path | None, option: str, will_write: Sequence[str] = ()) -> Path | None:
    """A folder to write into: created and probed now, so that a path that cannot be written fails before any work.

    ``will_write`` names the files the run writes there: a folder in the place of one is refused too.
    """
    path = folder(value, option)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError(option, value, f"cannot create the folder {path} ({e.strerror or e})") from None
    for name in will_write:
        if (path / name).is_dir():
            raise OptionError(option, value, f"{path / name} is a folder, but the run writes the file {name} there")
    _probe_writable(path, option, value, f"the folder {path}")
    return path


def output_folder_later(value: str | Path | None, option: str) -> Path | None:
    """A folder the run creates later (beside a temporary sibling): nothing is created now, but a file in
    its place, or a nearest existing folder that cannot be written, fails now."""
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise OptionError(option, value, f"expected a folder, but {path} is a file")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(option, value, f"cannot create {path}: {ancestor} is a file, not a folder")
    for folder in ([path] if path.is_dir() else []) + [ancestor]:
        _probe_writable(folder, option, value, f"the folder {folder}")
    return path


def output_file(value: str | Path | None, option: str) -> Path | None:
    """A file the run will write (through a temporary beside it): never a folder, and its folder writable now."""
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise OptionError(option, value, f"expected a file path, but {path} is a folder")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OptionError(option, value, f"cannot write {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError(option, value, f"cannot create the folder {parent} ({e.strerror or e})") from None
    _probe_writable(parent, option, value, f"the folder {parent}, where {path.name} is written,")
    return path


CACHE_ENV = "QACLIP_CACHE"
CACHE_BUDGET_ENV = "QACLIP_CACHE_BUDGET_GB"


def _cache_name() -> str:
    root = os.environ.get(CACHE_ENV, "").strip()
    return CACHE_ENV if root else "the package cache (QACLIP_CACHE unset, default ~/.cache/qaclip)"


def package_cache(write: bool) -> Path:
    """The package cache folder (``$QACLIP_CACHE`` or ``~/.cache/qaclip``), checked now: never a file or under one;
    with ``write`` created and probed (a read-only folder fails here, not inside a case). Errors name QACLIP_CACHE."""
    from qaclip_core.pretrained import cache_root

    path, name = cache_root(), _cache_name()
    value = os.environ.get(CACHE_ENV, "").strip() or str(path)
    if path.exists() and not path.is_dir():
        raise OptionError(name, value, f"expected a folder, but {path} is a file")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OptionError(name, value, f"cannot create the folder {path}: {ancestor} is a file, not a folder")
    if write:
        new_output_folder(path, name)
    return path


def cache_budget_gb() -> float | None:
    """``QACLIP_CACHE_BUDGET_GB`` checked: a finite number of gigabytes, at least 0 (None when unset)."""
    import math

    raw = os.environ.get(CACHE_BUDGET_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise OptionError(CACHE_BUDGET_ENV, raw, "expected a number of gigabytes >= 0 (e.g. 64)") from None
    if not math.isfinite(value * 1e9) or value < 0:
        raise OptionError(CACHE_BUDGET_ENV, raw, "expected a finite number of gigabytes >= 0 (e.g. 64)")
    return value


def cache_folder(sub: str) -> Path:
    """``<package cache>/<sub>`` (``$QACLIP_CACHE`` or ``~/.cache/qaclip``), created and probed; errors name ``QACLIP_CACHE``."""
    folder = new_output_folder(package_cache(write=False) / sub, _cache_name())
    return cast(Path, folder)  # a value gives a folder, never None


RUN_NAME_MAX = 200  # bytes: with the time stamp before it, within a file system's 255 per folder name


def run_name(value: str, option: str = "--name") -> str:
    """One folder name for a kept run (``<time>-<name>``): not empty, no path separator, no control character."""
    text = str(value)
    if not text.strip():
        raise OptionError(option, value, "expected a name for the run (e.g. the commit), got an empty one")
    bad = sorted({c for c in text if c in "/\\" or not c.isprintable()})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise OptionError(
            option,
            value,
            f"must be one folder name, without path separators or control characters (found {shown}); "
            "replace them, e.g. '/' with '-'",
        )
    if text.strip(".") == "":
        raise OptionError(option, value, "expected a name (e.g. the commit), not only dots")
    size = len(text.encode("utf-8"))
    if size > RUN_NAME_MAX:
        raise OptionError(option, value[:40] + "...", f"is {size} bytes long; at most {RUN_NAME_MAX}")
    return text


def architecture(value: str, option: str = "--arch") -> str:
    """``VISION@TEXT`` with both towers known."""
    from qaclip_core.model.config import arch_config

    try:
        arch_config(value)
    except (ValueError, KeyError) as e:
        raise OptionError(option, value, str(e)) from None
    return value
