"""transformers' ``ChineseCLIPModel`` (QA-CLIP and CN-CLIP in Hugging Face format) behind the Encoder interface.

Two protocols, named by the model card's ``preprocessing``:

* ``reference``: the evaluation protocol that produced the published numbers, with only the
  model swapped: this package's image transform (squash resize, PIL bicubic, CLIP mean/std),
  its tokenizer (lower-casing, quote folding, context length 52). Features must equal the
  original ``.pt``'s through the native backend (``parity-hf-<model>`` cases, tests).
* ``processor``: ``ChineseCLIPProcessor`` as users call it: the folder's image processor as
  transformers loads it, its tokenizer, padded to the longest caption of a batch and truncated
  only at the tokenizer's ``model_max_length``. :func:`processor_differences` lists, from the
  processor's configuration, every step where this differs from the reference protocol.

``transformers`` is imported lazily: ``import qaclip_core`` never needs it. Install it with
``pip install 'qaclip-core[chineseclip]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable, Union

import torch
from PIL import Image

from qaclip_core.checkpoint import resolve_device, resolve_dtype
from qaclip_core.errors import CheckpointError, DownloadError
from qaclip_core.registry import ModelCard
from qaclip_core.tokenizer import CONTEXT_LENGTH, preprocess_text, tokenize
from qaclip_core.transforms import MEAN, STD, image_transform
from qaclip_harness import optional
from qaclip_harness.backends import transformers_base as hf_common

PathLike = Union[str, "os.PathLike[str]"]

INSTALL_HINT = "pip install 'qaclip-core[chineseclip]'"
PROTOCOLS = ("reference", "processor")
PAD_ID = 0  # [PAD] in the Chinese BERT vocabulary; the reference's mask is token != 0


def import_transformers() -> Any:
    """The ``transformers`` module, or an ImportError saying how to install it."""
    return optional.import_transformers("ChineseCLIP", INSTALL_HINT, extra="chineseclip")


def load_model(transformers: Any, source: str, kw: dict[str, Any], dtype: torch.dtype) -> Any:
    """``ChineseCLIPModel.from_pretrained`` that refuses missing, unexpected, mis-shaped or non-finite weights
    (:func:`~qaclip_harness.backends.transformers_base.load_pretrained`)."""
    return hf_common.load_pretrained(transformers.ChineseCLIPModel, transformers, source, kw, dtype, "ChineseCLIP")


# --------------------------------------------------------------------------------------------
# what ChineseCLIPProcessor does differently


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _size(value: Any) -> dict[str, Any]:
    """An image processor size (dict, SizeDict or int) as a plain dict of its set keys."""
    if isinstance(value, int):
        return {"shortest_edge": value}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    return {k: _get(value, k) for k in keys if value is not None and _get(value, k) is not None}


def _resample_name(value: Any) -> str:
    names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
    value = getattr(value, "value", value)
    return names.get(value, str(value)) if isinstance(value, int) else str(value).lower()


def _normaliser(tokenizer: Any) -> dict[str, Any]:
    """Lower-casing, accent stripping and CJK splitting of a BERT tokenizer, from its configuration."""
    settings: dict[str, Any] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if backend is not None else None
    for ours, theirs in (
        ("lowercase", "lowercase"),
        ("strip_accents", "strip_accents"),
        ("chinese_chars", "handle_chinese_chars"),
    ):
        value = getattr(normalizer, theirs, None) if normalizer is not None else None
        if value is not None or (normalizer is not None and hasattr(normalizer, theirs)):
            settings[ours] = value
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    settings.setdefault("lowercase", init.get("do_lower_case", getattr(tokenizer, "do_lower_case", None)))
    settings.setdefault("strip_accents", init.get("strip_accents"))
    settings.setdefault("chinese_chars", init.get("tokenize_chinese_chars", True))
    return settings


def processor_differences(
    image_processor: Any,
    tokenizer: Any,
    resolution: int,
    context_length: int = CONTEXT_LENGTH,
    max_length: int | None = None,
) -> list[str]:
    """Every preprocessing step where ``ChineseCLIPProcessor`` (as configured) differs from the reference protocol.

    Read from the image processor's and tokenizer's configuration; the reference protocol is
    DESIGN.md section 3 (squash resize to R x R with PIL bicubic, then RGB, CLIP mean/std;
    lower-case, fold curly quotes, BERT WordPiece, ``[CLS] ids[:50] [SEP]`` padded to 52).
    """
    out: list[str] = []
    ip = image_processor
    cls = type(ip).__name__
    torchvision_backend = "Fast" in cls or any(b.__name__ == "TorchvisionBackend" for b in type(ip).__mro__)
    size = _size(_get(ip, "size"))
    crop = _size(_get(ip, "crop_size"))
    if _get(ip, "do_resize") is False:
        out.append("no resize (the reference resizes to R x R)")
    else:
        if "shortest_edge" in size:
            out.append(
                f"resize keeps the aspect ratio, shortest side to {size['shortest_edge']} "
                f"(the reference squashes to {resolution}x{resolution})"
            )
        elif (size.get("height"), size.get("width")) != (resolution, resolution):
            out.append(f"resize to {size.get('height')}x{size.get('width')} (the reference: {resolution}x{resolution})")
        resample = _resample_name(_get(ip, "resample"))
        if resample != "bicubic":
            out.append(f"{resample} resampling (the reference: bicubic)")
        if torchvision_backend:
            out.append(
                f"resampling by torchvision on tensors ({cls}, antialiased bicubic), not PIL's bicubic as the reference"
            )
    if _get(ip, "do_center_crop"):
        out.append(f"centre crop to {crop.get('height')}x{crop.get('width')} (the reference does not crop)")
    if _get(ip, "do_convert_rgb") is False:
        out.append("no RGB conversion (grey, palette and RGBA images reach the model unconverted)")
    elif _get(ip, "do_convert_rgb"):
        out.append(
            "RGB conversion before the resize (the reference resizes first: palette and 1-bit images "
            "are resized by nearest neighbour there)"
        )
    factor = _get(ip, "rescale_factor")
    if _get(ip, "do_rescale") is False or (factor is not None and abs(float(factor) - 1 / 255) > 1e-12):
        out.append(f"rescale {'off' if _get(ip, 'do_rescale') is False else f'by {factor}'} (the reference: 1/255)")
    mean, std = _get(ip, "image_mean"), _get(ip, "image_std")
    if _get(ip, "do_normalize") is False:
        out.append("no mean/std normalisation")
    elif (
        mean is not None
        and std is not None
        and (
            any(abs(float(a) - b) > 1e-6 for a, b in zip(mean, MEAN))
            or any(abs(float(a) - b) > 1e-6 for a, b in zip(std, STD))
        )
    ):
        out.append(f"mean {list(mean)} std {list(std)} (the reference: OpenAI-CLIP's)")

    norm = _normaliser(tokenizer)
    out.append("no folding of curly quotes to '\"' (the reference folds them; the BERT vocabulary has no “ or ”)")
    if not norm.get("lowercase"):
        out.append("no lower-casing (the reference lower-cases)")
    strip = norm.get("strip_accents")
    if strip is False or (strip is None and not norm.get("lowercase")):
        out.append("accents kept (the reference strips them)")
    if norm.get("chinese_chars") is False:
        out.append("CJK characters not split one per token (the reference splits them)")
    out.append(
        f"padding to the longest caption of a batch (the reference pads to {context_length}; padding is "
        f"masked, so only float rounding differs)"
    )
    if max_length is None or max_length != context_length:
        out.append(
            f"truncation at {max_length} tokens (the reference keeps [CLS] + {context_length - 2} word pieces "
            f"+ [SEP]; longer captions differ)"
        )
    return out


# --------------------------------------------------------------------------------------------
# the encoder


class ChineseCLIPEncoder(hf_common.TransformersEncoder):
    """A transformers ``ChineseCLIPModel`` with the reference protocol or ``ChineseCLIPProcessor``."""

    def __init__(
        self,
        model: Any,
        protocol: str = "reference",
        processor: Any = None,
        name: str = "chineseclip",
        context_length: int = CONTEXT_LENGTH,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"{name}: unknown preprocessing protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        if protocol == "processor" and processor is None:
            raise ValueError(f"{name}: the processor protocol needs a ChineseCLIPProcessor")
        self.model = model.eval()
        self.protocol = protocol
        self.processor = processor
        self.name = name
        self.context_length = int(context_length)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_positions = int(model.config.text_config.max_position_embeddings)
        config_pad = getattr(model.config.text_config, "pad_token_id", None)
        if config_pad not in (None, PAD_ID):
            raise CheckpointError(
                f"{name}: config.json text pad_token_id is {config_pad}; the Chinese BERT vocabulary pads with {PAD_ID}"
            )
        self.differences: list[str] = []
        if protocol == "reference":
            self.pad_id = PAD_ID
            # the transform object itself, so loaders can use its ``into``
            self.preprocess: Callable[[Image.Image], torch.Tensor] = image_transform(self.image_size)
        else:
            tok = processor.tokenizer
            if tok.pad_token_id is None:
                raise CheckpointError(f"{name}: the tokenizer has no pad token; the attention mask is derived from it")
            self.pad_id = int(tok.pad_token_id)
            self.preprocess = self._processor_image
            model_max = getattr(tok, "model_max_length", None)
            # as users call it (padding=True) there is no truncation; a caption beyond the model's
            # positions would fail, so the tokenizer's own limit applies, capped by the positions
            self.max_length = (
                min(int(model_max), self.max_positions) if model_max and model_max < 10**6 else self.max_positions
            )
            self.differences = processor_differences(
                processor.image_processor, tok, self.image_size, self.context_length, self.max_length
            )

    @classmethod
    def from_pretrained(
        cls,
        path_or_dir: PathLike,
        protocol: str = "reference",
        name: str = "chineseclip",
        device: str | torch.device = "auto",
        precision: str = "fp32",
    ) -> ChineseCLIPEncoder:
        """Load a transformers-format ChineseCLIP folder (or hub repo id) on ``device`` in ``precision``."""
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"{name}: unknown preprocessing protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        transformers = import_transformers()
        dev, dtype = resolve_device(device), resolve_dtype(precision)
        source, kw = hf_common.resolve_source(path_or_dir, "ChineseCLIP")
        model = load_model(transformers, source, kw, dtype)
        processor = None
        if protocol == "processor":
            try:
                processor = transformers.ChineseCLIPProcessor.from_pretrained(source, **kw)
            except (OSError, ValueError) as e:
                err = CheckpointError if kw else DownloadError
                raise err(f"cannot load ChineseCLIPProcessor from {source}: {type(e).__name__}: {e}") from e
        model = model.to(device=dev, dtype=dtype).eval()
        return cls(model, protocol=protocol, processor=processor, name=name)

    def _processor_image(self, image: Image.Image) -> torch.Tensor:
        """The folder's image processor, as ChineseCLIPProcessor runs it -> [3, R, R] fp32."""
        out = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)[0].float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Reference: lower-case, fold quotes, WordPiece, 52 tokens. Processor: its tokenizer, padded to the longest."""
        texts = [str(t) for t in texts]
        if self.protocol == "reference":
            return tokenize([preprocess_text(t) for t in texts], context_length=self.context_length)
        enc = self.processor.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"].long()


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_harness.backends)


def load(
    card: ModelCard, path: PathLike, device: str | torch.device = "auto", precision: str = "fp32", compile: bool = False
) -> ChineseCLIPEncoder:
    """Load the folder at ``path`` with the card's protocol; ``compile`` runs eagerly with a warning."""
    hf_common.eager_only(card.name, compile)
    protocol = card.preprocessing or "reference"
    encoder = ChineseCLIPEncoder.from_pretrained(
        path, protocol=protocol, name=card.name, device=device, precision=precision
    )
    if encoder.image_size != card.resolution:
        raise CheckpointError(
            f"{path}: config.json has vision image_size {encoder.image_size}, but model {card.name!r} is {card.resolution} px"
        )
    return encoder
