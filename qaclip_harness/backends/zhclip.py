"""ZH-CLIP (``thu-ml/zh-clip-vit-roberta-large-patch14``) behind the Encoder interface, on transformers' CLIP and BERT classes.

The model, as its repository defines it (the code here is this package's own):

* vision: the vision part of ``CLIPVisionModel`` (ViT-L/14, 224 px); the image feature is its pooled
  output (the class token after the post-LayerNorm) through ``visual_projection``, a Linear layer
  *with* bias from the vision width to the joint width (``hidden_size`` of the folder's config);
* text: a BERT encoder (``hfl/chinese-roberta-wwm-ext-large``); the text feature is the mean of the
  last hidden states over the attention mask, through ``text_projection``: Linear (no bias) to
  ``(text width + joint width) // 2``, exact GELU, Linear (no bias) to the joint width;
* no logit scale; state-dict keys ``vision_model.*``, ``text_model.*`` (BERT, its pooler included),
  ``visual_projection.{weight,bias}``, ``text_projection.{0,2}.weight``.

Processing is the model's own: the folder's ``CLIPImageProcessor`` (transformers' PIL backend, as
the original processor ran) and its ``BertTokenizer``, truncated at 77 tokens as its example does.
Features are returned unnormalised; the evaluation L2-normalises them, as retrieval and zero-shot
evaluation of a contrastive model do (the example's plain dot products only rank one image's labels).

Loading is strict: every tensor of the model must be in the weights file, with its shape, finite,
and nothing else may be there except the ``position_ids`` buffers older transformers saved (checked
to be ``0..n-1``). ``transformers`` is imported lazily (``pip install 'qaclip-core[zhclip]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from torch import nn

from qaclip_core.checkpoint import non_finite_weights, resolve_device, resolve_dtype
from qaclip_core.errors import CheckpointError
from qaclip_core.registry import ModelCard
from qaclip_harness import optional
from qaclip_harness.backends import transformers_base as hf_common

PathLike = Union[str, "os.PathLike[str]"]

INSTALL_HINT = "pip install 'qaclip-core[zhclip]'"
CONTEXT_LENGTH = 77  # the tokenizer call of ZH-CLIP's example (padding=True, truncation=True, max_length=77)
DEFAULT_JOINT = 768  # hidden_size of its configuration class when config.json does not give it
_SHOW = 4


def import_transformers() -> Any:
    """The ``transformers`` module, or a MissingDependencyError naming the extra."""
    return optional.import_transformers("ZH-CLIP", INSTALL_HINT, extra="zhclip")


# --------------------------------------------------------------------------------------------
# the model


class ZhCLIP(nn.Module):
    """ZH-CLIP's two towers and heads (``get_image_features`` and ``get_text_features`` as transformers models name them)."""

    def __init__(self, vision_config: Any, text_config: Any, joint_width: int):
        super().__init__()
        transformers = import_transformers()
        tower = transformers.CLIPVisionModel(vision_config)
        # transformers 4 wraps the transformer as CLIPVisionModel.vision_model; in 5 the model is the transformer:
        # either way its keys are embeddings.*, pre_layrnorm.*, encoder.*, post_layernorm.* (ZH-CLIP's vision_model.*)
        self.vision_model = getattr(tower, "vision_model", tower)
        self.text_model = transformers.BertModel(text_config)  # with its pooler, which the weights hold (unused)
        vision_width, text_width = int(vision_config.hidden_size), int(text_config.hidden_size)
        hidden = (text_width + joint_width) // 2
        self.visual_projection = nn.Linear(vision_width, joint_width, bias=True)
        self.text_projection = nn.Sequential(
            nn.Linear(text_width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, joint_width, bias=False)
        )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled class token (after the post-LayerNorm) through the visual projection."""
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean of the last hidden states over the mask, through the two-layer text projection."""
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.text_projection((hidden * mask).sum(dim=1) / mask.sum(dim=1))


def configs(doc: Mapping[str, Any], source: str) -> tuple[Any, Any, int]:
    """(CLIPVisionConfig, BertConfig, joint width) from a ZH-CLIP ``config.json``; a CheckpointError naming what is wrong."""
    transformers = import_transformers()
    vision, text = doc.get("vision_config"), doc.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise CheckpointError(f"{source}: expected a ZH-CLIP config with vision_config and text_config mappings")
    vision, text = dict(vision), dict(text)
    vtype, ttype = vision.pop("model_type", "clip_vision_model"), text.pop("model_type", "bert")
    if vtype == "clip":  # a whole CLIP config: its vision part, as ZH-CLIP's config class takes it
        vision = dict(vision.get("vision_config") or {})
        vision.pop("model_type", None)
    elif vtype != "clip_vision_model":
        raise CheckpointError(
            f"{source}: vision_config.model_type {vtype!r}; ZH-CLIP's vision tower is a CLIP vision model"
        )
    if ttype != "bert":
        raise CheckpointError(f"{source}: text_config.model_type {ttype!r}; ZH-CLIP's text tower is a BERT model")
    joint = doc.get("hidden_size", DEFAULT_JOINT)
    if isinstance(joint, bool) or not isinstance(joint, int) or joint < 1:
        raise CheckpointError(f"{source}: hidden_size (the joint width) must be a positive integer, got {joint!r}")
    try:
        return transformers.CLIPVisionConfig(**vision), transformers.BertConfig(**text), joint
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot be read as a ZH-CLIP config ({e})") from e


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The folder's state dict (safetensors preferred, pickles read with ``weights_only``) and the file it came from."""
    index_names = {"model.safetensors.index.json": "safetensors", "pytorch_model.bin.index.json": "bin"}
    for single, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if (folder / single).is_file():
            return _read_file(folder / single, kind), str(folder / single)
    for index, kind in index_names.items():
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{folder / index}: not a readable weight index ({e})") from e
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(_read_file(folder / shard, kind))
            return sd, str(folder / index)
    raise CheckpointError(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")


def _read_file(path: Path, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); download it again") from e
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors, which could run code when loaded "
            "(read with weights_only=True); expected a plain state dict, or model.safetensors"
        ) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Assign ``sd`` to ``model`` (built on the meta device): every tensor present, of its shape, finite; nothing else."""
    sd = dict(sd)
    for key in [k for k in sd if k.endswith("position_ids")]:
        value = sd.pop(key)  # a buffer older transformers saved: rebuilt below, so it must be the plain range
        if not torch.equal(value.reshape(-1).long(), torch.arange(value.numel())):
            raise CheckpointError(f"{source}: {key} is not 0..{value.numel() - 1}; the model rebuilds it as that range")
    expected = model.state_dict()
    for key in [k for k in expected if k.endswith("position_ids")]:  # a persistent buffer in some versions
        sd[key] = torch.arange(expected[key].shape[-1]).expand(expected[key].shape).contiguous()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k} {list(sd[k].shape)} in the weights, {list(expected[k].shape)} by config.json"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}" + (" ..." if len(keys) > _SHOW else "")
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not hold ZH-CLIP's weights as config.json describes: " + "; ".join(problems)
        )
    model.load_state_dict(sd, strict=True, assign=True)
    for module in model.modules():  # non-persistent buffers are not in a state dict: rebuild them
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                n = buf.shape[-1]
                value = torch.arange(n).expand(buf.shape) if name == "position_ids" else torch.zeros(buf.shape)
                module.register_buffer(name, value.to(torch.long).contiguous(), persistent=False)
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} weight(s) hold NaN or infinite values: {', '.join(bad[:_SHOW])}"
            + (" ..." if len(bad) > _SHOW else "")
        )


def load_model(folder: PathLike, dtype: torch.dtype = torch.float32) -> ZhCLIP:
    """A ZH-CLIP folder's model (config.json and weights), strictly loaded, in ``dtype`` on the CPU."""
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        doc = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: cannot be read as a ZH-CLIP config ({e})") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    vision, text, joint = configs(doc, str(config_path))
    with torch.device("meta"):  # no random initialisation: every weight is assigned from the file
        model = ZhCLIP(vision, text, joint)
    sd, source = read_weights(folder)
    load_strict(model, sd, source)
    return model.to(dtype=dtype).eval()


# --------------------------------------------------------------------------------------------
# the encoder


class ZhCLIPEncoder(hf_common.TransformersEncoder):
    """ZH-CLIP with its own image processor and tokenizer."""

    def __init__(self, model: ZhCLIP, image_processor: Any, tokenizer: Any, name: str = "zhclip"):
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:
            raise CheckpointError(f"{name}: the tokenizer has no pad token; the attention mask is derived from it")
        self.pad_id = int(tokenizer.pad_token_id)  # encode_text gets ids only: the mask is rebuilt from it

    @classmethod
    def from_pretrained(
        cls, folder: PathLike, name: str = "zhclip", device: str | torch.device = "auto", precision: str = "fp32"
    ) -> ZhCLIPEncoder:
        """Load a ZH-CLIP folder (config.json, weights, preprocessor_config.json, vocab.txt) on ``device`` in ``precision``."""
        from qaclip_harness.backends.altclip import pil_image_processor_class

        transformers = import_transformers()
        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} is not a ZH-CLIP model folder: it has no config.json")
        model = load_model(folder, resolve_dtype(precision)).to(resolve_device(device))
        try:
            image_processor = pil_image_processor_class(transformers).from_pretrained(
                str(folder), local_files_only=True
            )
            tokenizer = transformers.BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load ZH-CLIP's processor from {folder}: {type(e).__name__}: {e}") from e
        return cls(model, image_processor, tokenizer, name=name)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The folder's CLIPImageProcessor (shortest-side bicubic resize, centre crop, CLIP mean/std) -> [3, R, R] fp32."""
        out = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)[0].float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Its BERT tokenizer, truncated and padded to 77 tokens (the mean pooling is masked: padding changes nothing)."""
        return hf_common.padded_ids(self.tokenizer, texts, CONTEXT_LENGTH)


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_harness.backends)


def load(
    card: ModelCard, path: PathLike, device: str | torch.device = "auto", precision: str = "fp32", compile: bool = False
) -> ZhCLIPEncoder:
    """Load the ZH-CLIP folder at ``path``; ``compile`` is not supported here and runs eagerly with a warning."""
    hf_common.eager_only(card.name, compile)
    return ZhCLIPEncoder.from_pretrained(path, name=card.name, device=device, precision=precision)
