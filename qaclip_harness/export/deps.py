"""The optional packages of the ONNX backend, imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

from qaclip_harness.errors import MissingDependencyError

EXTRA = "onnx"
INSTALL_HINT = "pip install 'qaclip-core[onnx]'"
# import name -> the distribution pip installs it from
PACKAGES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}


def require(*names: str) -> tuple[ModuleType, ...]:
    """The modules ``names`` (default: all of the extra), or one MissingDependencyError (an ImportError) naming them and the extra."""
    names = names or tuple(PACKAGES)
    found: dict[str, ModuleType] = {}
    missing = []
    for name in names:
        try:
            found[name] = importlib.import_module(name)
        except ImportError:
            missing.append(PACKAGES.get(name, name))
    if missing:
        raise MissingDependencyError(
            f"the ONNX backend needs {', '.join(missing)} (not installed); install the '{EXTRA}' extra: {INSTALL_HINT}",
            package=", ".join(missing),
            extra=EXTRA,
        )
    return tuple(found[n] for n in names)


def available() -> bool:
    """Whether every package of the extra imports."""
    try:
        require()
    except ImportError:
        return False
    return True
