"""Optional packages (transformers), imported only when used, with one line naming the extra that installs them."""

from __future__ import annotations

import re
from typing import Any

from qaclip_harness.errors import MissingDependencyError

MIN_TRANSFORMERS = "4.40"


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading release numbers only: ``"4.40.0.dev0"`` -> (4, 40, 0), ``"5.0.0rc1"`` -> (5, 0, 0)."""
    return tuple(int(n) for n in re.findall(r"\d+", re.sub(r"[^\d.].*", "", version, flags=re.S))[:3])


def import_transformers(family: str, hint: str, minimum: str = MIN_TRANSFORMERS, extra: str = "") -> Any:
    """The ``transformers`` module, or a MissingDependencyError (an ImportError) naming ``family`` and ``hint``."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"{family} models need the 'transformers' package (>= {minimum}), which is not installed "
            f"or cannot be imported ({e}); install it with: {hint}",
            package="transformers",
            extra=extra,
        ) from e
    if version_tuple(transformers.__version__) < version_tuple(minimum):
        raise MissingDependencyError(
            f"{family} models need transformers >= {minimum}, found {transformers.__version__}; upgrade with: {hint}",
            package="transformers",
            extra=extra,
        )
    return transformers
