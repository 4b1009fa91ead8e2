"""What the transformers-based backends share: the lazy import, folder resolution, feature extraction.

``transformers`` is imported only when a model is loaded, so ``import qaclip_core`` never needs it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from ..errors import CheckpointError, MissingDependencyError

PathLike = Union[str, "os.PathLike[str]"]
MIN_TRANSFORMERS = "4.40"


def version_tuple(version: str) -> Tuple[int, ...]:
    """Leading release numbers only: ``"4.40.0.dev0"`` -> (4, 40, 0), ``"5.0.0rc1"`` -> (5, 0, 0)."""
    return tuple(int(n) for n in re.findall(r"\d+", re.match(r"^[\d.]*", version).group(0))[:3])


def import_transformers(family: str, hint: str, minimum: str = MIN_TRANSFORMERS, extra: str = "") -> Any:
    """The ``transformers`` module, or a MissingDependencyError (an ImportError) naming ``family`` and ``hint``."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"{family} models need the 'transformers' package (>= {minimum}), which is not installed "
            f"or cannot be imported ({e}); install it with: {hint}", package="transformers", extra=extra,
        ) from e
    if version_tuple(transformers.__version__) < version_tuple(minimum):
        raise MissingDependencyError(
            f"{family} models need transformers >= {minimum}, found {transformers.__version__}; upgrade with: {hint}",
            package="transformers", extra=extra,
        )
    return transformers


def dtype_kwarg(transformers: Any) -> str:
    """The ``from_pretrained`` keyword for the weights' dtype in this transformers version."""
    # transformers 4.56 renamed torch_dtype to dtype (and 5.x defaults to the saved dtype)
    return "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


def resolve_source(path_or_dir: PathLike, family: str) -> Tuple[str, Dict[str, Any]]:
    """(source, from_pretrained keywords): a local folder is loaded without network, else a hub repo id."""
    source = os.fspath(path_or_dir)
    local = Path(source).expanduser()
    if local.is_file():  # e.g. its config.json was passed
        local = local.parent
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{local} is not a transformers model folder: it has no config.json")
        return str(local), {"local_files_only": True}  # a folder on disk never touches the network
    if os.sep in source or source.startswith((".", "~")) or source.count("/") > 1:
        raise CheckpointError(f"{family} folder {source} does not exist")
    return source, {}  # a hub repo id: transformers resolves it through its own cache


def features(out: Any, what: str) -> torch.Tensor:
    """Projected features out of whatever ``get_*_features`` returned in this transformers version."""
    if isinstance(out, torch.Tensor):  # transformers 4.x
        return out
    # transformers 5: a BaseModelOutputWithPooling whose pooler_output is the projected embedding
    for key in (f"{what}_embeds", "pooler_output"):
        value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected return type {type(out).__name__} from get_{what}_features")


def trim_padding(tokens: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row (masked keys contribute nothing: only time is saved)."""
    if tokens.shape[1] <= 1 or not len(tokens):
        return tokens, mask
    used = mask.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return tokens[:, :keep], mask[:, :keep]
