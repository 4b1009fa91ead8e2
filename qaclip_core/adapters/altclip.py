"""AltCLIP (Hugging Face ``transformers`` format) behind the :class:`~qaclip_core.adapters.base.Encoder` interface.

AltCLIP is evaluated with its own preprocessing and tokenisation, because that is how it was
trained and how its published numbers were produced:

* images: AltCLIP's ``CLIPImageProcessor`` from ``preprocessor_config.json`` (RGB, resize the
  shortest side with PIL bicubic, centre crop, rescale, OpenAI-CLIP mean/std), run through
  transformers' PIL backend, which is what the original processor did;
* text: its XLM-R tokenizer, truncated and padded to a fixed length (77, as AltCLIP's own
  examples use); Chinese-CLIP's text normalisation (lower-casing, quote folding) is not applied.

``transformers`` is imported lazily: ``import qaclip_core`` never needs it. Install it with
``pip install 'qaclip-core[altclip]'``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image

from ..checkpoint import resolve_device, resolve_dtype
from ..errors import CheckpointError, DownloadError
from ..hub_folder import FolderLayout, fetch_folder
from ..registry import ModelCard
from . import hf_common

PathLike = Union[str, "os.PathLike[str]"]

MIN_TRANSFORMERS = "4.40"
INSTALL_HINT = "pip install 'qaclip-core[altclip]'"
CONTEXT_LENGTH = 77  # AltCLIP's examples and FlagAI's inference code truncate at 77 tokens

# Files of a transformers AltCLIP repo that loading needs (weights are chosen by hub_folder).
LAYOUT = FolderLayout(
    family="AltCLIP",
    config_files=(
        "config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "sentencepiece.bpe.model",
    ),
    tokenizer_files=("tokenizer.json", "sentencepiece.bpe.model"),
    manual_files=("config.json, preprocessor_config.json, the tokenizer files (tokenizer.json, tokenizer_config.json, "
                  "special_tokens_map.json, sentencepiece.bpe.model)"),
)


# --------------------------------------------------------------------------------------------
# transformers, lazily


def import_transformers() -> Any:
    """The ``transformers`` module, or a MissingDependencyError (an ImportError) saying how to install it."""
    return hf_common.import_transformers("AltCLIP", INSTALL_HINT, MIN_TRANSFORMERS, extra="altclip")


def pil_image_processor_class(transformers: Any) -> Any:
    """transformers' CLIP image processor on the PIL backend (AltCLIP's original preprocessing)."""
    # transformers 5 made CLIPImageProcessor the torchvision backend and moved the PIL one to
    # CLIPImageProcessorPil; in 4.x CLIPImageProcessor is the PIL one. AltCLIP's published numbers
    # come from the PIL resize, and the two differ by a grey level here and there.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


# --------------------------------------------------------------------------------------------
# the encoder


class AltCLIPEncoder:
    """A ``transformers`` AltCLIP model with its own image processor and tokenizer."""

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, name: str = "altclip",
                 context_length: int = CONTEXT_LENGTH):
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(context_length)
        if tokenizer.pad_token_id is None:
            raise CheckpointError(f"{name}: the tokenizer has no pad token; the attention mask is derived from it")
        # encode_text receives only ids, so the mask is rebuilt from the pad id there; the
        # evaluation's length sort reads it too (XLM-R pads with 1, and 0 is <s>).
        self.pad_id = int(tokenizer.pad_token_id)
        config_pad = getattr(model.config.text_config, "pad_token_id", None)
        if config_pad is not None and int(config_pad) != self.pad_id:
            # position ids are counted from the config's pad id: a mismatch would shift them
            raise CheckpointError(
                f"{name}: tokenizer pad id {self.pad_id} differs from the model's pad_token_id {config_pad}"
            )
        crop = getattr(image_processor, "crop_size", None) or {}
        self.image_size = int(crop.get("height", model.config.vision_config.image_size))

    @classmethod
    def from_pretrained(
        cls,
        path_or_dir: PathLike,
        name: str = "altclip",
        device: Union[str, torch.device] = "auto",
        precision: str = "fp32",
        context_length: int = CONTEXT_LENGTH,
    ) -> "AltCLIPEncoder":
        """Load a transformers-format AltCLIP folder (or hub repo id) on ``device`` in ``precision``."""
        transformers = import_transformers()
        dev, dtype = resolve_device(device), resolve_dtype(precision)
        source, kw = hf_common.resolve_source(path_or_dir, "AltCLIP")
        dtype_kw = hf_common.dtype_kwarg(transformers)
        try:
            model = transformers.AltCLIPModel.from_pretrained(source, **{dtype_kw: dtype}, **kw)
            image_processor = pil_image_processor_class(transformers).from_pretrained(source, **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kw)
        except (OSError, ValueError) as e:
            # a local folder that does not load is a bad checkpoint; a repo id that does not is a failed fetch
            err = CheckpointError if kw else DownloadError
            raise err(f"cannot load AltCLIP from {source}: {type(e).__name__}: {e}") from e
        model = model.to(device=dev, dtype=dtype).eval()
        return cls(model, image_processor, tokenizer, name=name, context_length=context_length)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return next(self.model.parameters()).dtype

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """AltCLIP's image processor: shortest side resize, centre crop, CLIP mean/std -> [3, R, R] fp32."""
        out = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)[0].float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """XLM-R ids padded to ``context_length``; no lower-casing (AltCLIP's own tokenisation)."""
        enc = self.tokenizer(
            [str(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return enc["input_ids"].long()

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 for real tokens, 0 for padding, from the pad id."""
        return (tokens != self.pad_id).long()

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] in the model's dtype."""
        pixels = images.to(self.device, self.dtype, non_blocking=True)
        return hf_common.features(self.model.get_image_features(pixel_values=pixels), "image")

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [N, D] in the model's dtype; padding is masked, so trimming it changes nothing."""
        tokens = tokens.to(self.device, non_blocking=True).long()
        mask = self.attention_mask(tokens)
        # the position ids of real tokens do not depend on trailing padding, so trimming it is exact
        tokens, mask = hf_common.trim_padding(tokens, mask)
        out = self.model.get_text_features(input_ids=tokens, attention_mask=mask)
        return hf_common.features(out, "text")


# --------------------------------------------------------------------------------------------
# fetching


def altclip_folder_complete(folder: PathLike) -> bool:
    """Whether ``folder`` holds a config, image processor config, tokenizer and weights."""
    return LAYOUT.complete(folder)


def fetch_altclip(card: ModelCard, download_root: Optional[PathLike] = None, endpoint: Optional[str] = None) -> Path:
    """Folder of the card's transformers-format model (``download_root/<repo name>``), downloading what is missing."""
    return fetch_folder(card, LAYOUT, download_root=download_root, endpoint=endpoint)


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_core.adapters)


def fetch(card: ModelCard, download_root: Optional[PathLike] = None, endpoint: Optional[str] = None) -> Path:
    """The card's transformers folder, fetched when incomplete."""
    return fetch_altclip(card, download_root=download_root, endpoint=endpoint)


def load(card: ModelCard, path: PathLike, device: Union[str, torch.device] = "auto", precision: str = "fp32",
         compile: bool = False) -> "AltCLIPEncoder":
    """Load the folder at ``path``; ``compile`` is not supported here and runs eagerly with a warning."""
    if compile:
        warnings.warn(f"{card.name}: compile applies to qaclip_core models only; running eagerly", UserWarning, stacklevel=3)
    return AltCLIPEncoder.from_pretrained(path, name=card.name, device=device, precision=precision)
