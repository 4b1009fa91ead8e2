"""What the transformers-based backends share: folder resolution, feature extraction, and the encoder's towers.

``transformers`` is imported only when a model is loaded (:func:`qaclip_harness.optional.import_transformers`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from qaclip_core.errors import CheckpointError
from qaclip_core.model.clip import trim_padding
from qaclip_harness.optional import version_tuple

PathLike = Union[str, "os.PathLike[str]"]




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
