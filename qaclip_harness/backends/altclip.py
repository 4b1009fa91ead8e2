"""AltCLIP (Hugging Face ``transformers`` format) behind the :class:`~qaclip_harness.backends.base.Encoder` interface.

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
from collections.abc import Sequence
from typing import Any, Union

import torch
from PIL import Image

from qaclip_core.checkpoint import resolve_device, resolve_dtype
from qaclip_core.errors import CheckpointError, DownloadError
from qaclip_core.registry import ModelCard
from qaclip_harness import optional
from qaclip_harness.backends import transformers_base as hf_common

PathLike = Union[str, "os.PathLike[str]"]

MIN_TRANSFORMERS = "4.40"
INSTALL_HINT = "pip install 'qaclip-core[altclip]'"
CONTEXT_LENGTH = 77  # AltCLIP's examples and FlagAI's inference code truncate at 77 tokens


# --------------------------------------------------------------------------------------------
# transformers, lazily


def import_transformers() -> Any:
    """The ``transformers`` module, or a MissingDependencyError (an ImportError) saying how to install it."""
    return optional.import_transformers("AltCLIP", INSTALL_HINT, MIN_TRANSFORMERS, extra="altclip")


def pil_image_processor_class(transformers: Any) -> Any:
    """transformers' CLIP image processor on the PIL backend (AltCLIP's original preprocessing)."""
    # transformers 5 made CLIPImageProcessor the torchvision backend and moved the PIL one to
    # CLIPImageProcessorPil; in 4.x CLIPImageProcessor is the PIL one. AltCLIP's published numbers
    # come from the PIL resize, and the two differ by a grey level here and there.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


# --------------------------------------------------------------------------------------------
# the encoder


class AltCLIPEncoder(hf_common.TransformersEncoder):
    """A ``transformers`` AltCLIP model with its own image processor and tokenizer."""

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        name: str = "altclip",
        context_length: int = CONTEXT_LENGTH,
    ):
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
        device: str | torch.device = "auto",
        precision: str = "fp32",
        context_length: int = CONTEXT_LENGTH,
    ) -> AltCLIPEncoder:
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

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """AltCLIP's image processor: shortest side resize, centre crop, CLIP mean/std -> [3, R, R] fp32."""
        out = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)[0].float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """XLM-R ids padded to ``context_length``; no lower-casing (AltCLIP's own tokenisation)."""
        return hf_common.padded_ids(self.tokenizer, texts, self.context_length)


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_harness.backends)


def load(
    card: ModelCard, path: PathLike, device: str | torch.device = "auto", precision: str = "fp32", compile: bool = False
) -> AltCLIPEncoder:
    """Load the folder at ``path``; ``compile`` is not supported here and runs eagerly with a warning."""
    hf_common.eager_only(card.name, compile)
    return AltCLIPEncoder.from_pretrained(path, name=card.name, device=device, precision=precision)
