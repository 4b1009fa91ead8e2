"""What the transformers-based backends share: folder resolution, feature extraction, and the encoder's towers.

``transformers`` is imported only when a model is loaded (:func:`qaclip_harness.optional.import_transformers`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch

from qaclip_core.checkpoint import non_finite_weights
from qaclip_core.errors import CheckpointError, DownloadError
from qaclip_core.model.clip import trim_padding
from qaclip_harness.optional import version_tuple

PathLike = Union[str, "os.PathLike[str]"]
# the weight files transformers looks for in a folder, in its order of preference
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SHOW = 4


def eager_only(name: str, compile: bool) -> None:
    """Warn that ``compile`` is not applied: it covers qaclip_core models only, and a transformers folder runs eagerly."""
    if compile:
        warnings.warn(f"{name}: compile applies to qaclip_core models only; running eagerly", UserWarning, stacklevel=4)


def padded_ids(tokenizer: Any, texts: Sequence[str], length: int) -> torch.Tensor:
    """A transformers tokenizer's ids of ``texts``, truncated and padded to ``length`` tokens."""
    enc = tokenizer(
        [str(t) for t in texts], padding="max_length", truncation=True, max_length=length, return_tensors="pt"
    )
    return enc["input_ids"].long()


def dtype_kwarg(transformers: Any) -> str:
    """The ``from_pretrained`` keyword for the weights' dtype in this transformers version."""
    # transformers 4.56 renamed torch_dtype to dtype (and 5.x defaults to the saved dtype)
    return "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


def resolve_source(path_or_dir: PathLike, family: str) -> tuple[str, dict[str, Any]]:
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


def weights_file(folder: PathLike) -> str:
    """The weight file of a transformers folder that ``from_pretrained`` reads (for messages), or a description."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return name
    return f"its weights ({' or '.join(WEIGHT_FILES[::2])})"


def _load_failure(source: str, local: bool, family: str, e: BaseException) -> Exception:
    """One error for a folder that does not load, naming the folder, the file and what was expected."""
    import pickle

    first = (str(e).strip().splitlines() or [""])[0][:300]
    if not local:  # a hub repo id that does not load is a failed fetch
        return DownloadError(f"cannot load {family}Model from {source}: {type(e).__name__}: {first}")
    weights = f"{source}/{weights_file(source)}"
    if type(e).__name__ == "SafetensorError":
        return CheckpointError(
            f"{weights}: not a readable safetensors file ({first}); expected the complete file "
            f"{family}Model.save_pretrained writes: it is truncated or damaged, download it again"
        )
    if isinstance(e, pickle.UnpicklingError):
        return CheckpointError(
            f"{weights}: refused: it holds pickled objects other than tensors, which could run code "
            f"when loaded (read with weights_only=True); expected a plain state dict, or "
            f"model.safetensors"
        )
    if isinstance(e, OSError) and "config" in first.lower():
        return CheckpointError(f"{source}/config.json: cannot be read as a {family} config ({first})")
    return CheckpointError(f"cannot load {family}Model from {source}: {type(e).__name__}: {first}")


def load_pretrained(
    model_class: Any, transformers: Any, source: str, kw: dict[str, Any], dtype: torch.dtype, family: str
) -> Any:
    """``model_class.from_pretrained`` of a folder or repo id that refuses what would evaluate a broken model.

    transformers only logs missing, unexpected or mis-shaped weights (a ``config.json`` that does
    not fit its weights) and draws the gaps at random; it raises its own types for a damaged
    safetensors file or a pickle it refuses; and it loads NaN weights without a word. Each of
    these is a CheckpointError here, naming the folder, the file and what was expected.
    """
    local = bool(kw)
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its load report would repeat, unasked, what the error below says
    try:
        model, info = model_class.from_pretrained(
            source, **{dtype_kwarg(transformers): dtype}, output_loading_info=True, ignore_mismatched_sizes=True, **kw
        )
    except Exception as e:  # transformers, safetensors and torch raise many types
        raise _load_failure(source, local, family, e) from e
    finally:
        logging.set_verbosity(verbosity)
    weights = f"{source}/{weights_file(source)}" if local else source
    problems = []
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        shapes = [
            f"{k[0]} {list(k[1])} in the weights, {list(k[2])} by config.json"
            if isinstance(k, tuple) and len(k) == 3
            else str(k)
            for k in mismatched
        ]
        problems.append(
            f"{len(shapes)} weight(s) of other shapes than {source}/config.json describes: "
            + "; ".join(shapes[:_SHOW])
            + (" ..." if len(shapes) > _SHOW else "")
        )
    for what in ("missing_keys", "unexpected_keys", "error_msgs"):
        found = sorted(str(k) for k in (info.get(what) or []))
        if found:
            problems.append(
                f"{len(found)} {what.replace('_', ' ')}: {', '.join(found[:6])}" + (" ..." if len(found) > 6 else "")
            )
    if problems:
        raise CheckpointError(f"{weights} does not fit its config.json as a {family}Model: " + "; ".join(problems))
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(
            f"{weights}: {len(bad)} weight(s) hold NaN or infinite values: {', '.join(bad[:_SHOW])}"
            + (" ..." if len(bad) > _SHOW else "")
            + "; the file is damaged or from a diverged run"
        )
    return model


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


class TransformersEncoder:
    """The towers of a transformers CLIP-style model (``get_image_features``, ``get_text_features``) behind the Encoder interface.

    Subclasses set ``model``, ``pad_id`` and ``name`` and bring their own ``preprocess`` and ``tokenize``.
    """

    model: Any
    pad_id: int
    name: str

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return next(self.model.parameters()).dtype

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 for real tokens, 0 for padding, from the pad id."""
        return (tokens != self.pad_id).long()

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] in the model's dtype."""
        pixels = images.to(self.device, self.dtype, non_blocking=True)
        return features(self.model.get_image_features(pixel_values=pixels), "image")

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [N, D] in the model's dtype; padding is masked, so trimming trailing padding changes nothing.

        (BERT counts position ids from 0 and XLM-R from its pad id: neither depends on trailing padding.)
        """
        tokens = trim_padding(tokens.to(self.device, non_blocking=True).long(), self.pad_id)
        out = self.model.get_text_features(input_ids=tokens, attention_mask=self.attention_mask(tokens))
        return features(out, "text")
