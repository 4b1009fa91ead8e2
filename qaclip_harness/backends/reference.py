"""The reference implementations as feature sources, each with its own preprocessing and tokenizer.

* native (Chinese-CLIP format) checkpoints: ``cn_clip`` 1.6.0, loaded as its evaluation scripts
  load a checkpoint (model built from its config, weights in fp32, ``module.`` stripped and
  ``bert.pooler.*`` dropped, strict ``load_state_dict``), its ``image_transform`` and its
  ``tokenize`` after its evaluation's text normalisation;
* AltCLIP: ``transformers``' ``AltCLIPModel`` and ``AltCLIPProcessor`` used directly;
* :class:`ReferenceEncoder`: ``cn_clip`` behind the Encoder interface, for calibration.

Nothing here is used by the package's own models: these are test oracles, imported only when
a parity check runs. A missing package is a MissingDependencyError (an ImportError) whose
message names it and how to install it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from qaclip_core.checkpoint import read_state_dict, resolve_device
from qaclip_core.model.config import arch_config, reference_kwargs
from qaclip_core.registry import ModelCard
from qaclip_harness.errors import MissingDependencyError
from qaclip_harness.tensors import normalise

CN_CLIP_HINT = "pip install --no-deps cn_clip==1.6.0"
TRANSFORMERS_HINT = "pip install 'qaclip-core[altclip]'"
ALTCLIP_CONTEXT_LENGTH = 77  # AltCLIP's own examples pad and truncate at 77 tokens


def _import_cn_clip():
    try:
        from cn_clip.clip import model as ref_model
        from cn_clip.clip import utils as ref_utils
        from cn_clip.eval import data as ref_data
    except ImportError as e:
        raise MissingDependencyError(
            f"the reference implementation cn_clip is not installed ({e}); install it with: {CN_CLIP_HINT}",
            package="cn_clip",
        ) from e
    return ref_model, ref_utils, ref_data


class CnClipReference:
    """A checkpoint run by cn_clip, as its evaluation scripts run it (fp32)."""

    def __init__(
        self,
        arch: str,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        name: str = "cn_clip",
    ):
        ref_model, ref_utils, ref_data = _import_cn_clip()
        self.name = name
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        vision, _ = arch.split("@")
        self.resolution = _resolution(arch)
        with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its config
            if (Path(ref_utils.__file__).parent / "model_configs" / f"{vision}.json").is_file():
                model = ref_utils.create_model(arch)
            else:  # an architecture cn_clip ships no config for (the fixture): its CLIP class, our numbers
                model = ref_model.CLIP(**reference_kwargs(arch))
        ref_model.convert_models_to_fp32(model)
        model.float()
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        sd = state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state
        if next(iter(sd)).startswith("module"):
            sd = {k[len("module.") :]: v for k, v in sd.items() if "bert.pooler" not in k}
        model.load_state_dict(sd)
        self.model = model.to(self.device).eval()
        self._transform = ref_utils.image_transform(self.resolution)
        self._tokenize = ref_utils.tokenize
        self._preprocess_text = ref_data._preprocess_text

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """cn_clip's image_transform, then its encode_image, in batches."""
        pixels = torch.stack([self._transform(im) for im in images])
        with torch.no_grad():
            return torch.cat(
                [
                    normalise(self.model.encode_image(pixels[i : i + self.batch_size].to(self.device)).cpu())
                    for i in range(0, len(pixels), self.batch_size)
                ]
            )

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """cn_clip's evaluation text normalisation and tokenize, then its encode_text."""
        tokens = self._tokenize([self._preprocess_text(str(c)) for c in captions])
        with torch.no_grad():
            return normalise(self.model.encode_text(tokens.to(self.device)).cpu())


def _resolution(arch: str) -> int:
    from qaclip_core.model.config import arch_config

    return int(arch_config(arch).vision.image_size)


class TransformersAltCLIPReference:
    """A transformers-format AltCLIP folder run by ``AltCLIPModel`` and ``AltCLIPProcessor`` directly."""

    def __init__(
        self, folder: str | Path, device: str | torch.device = "cpu", batch_size: int = 32, name: str = "transformers"
    ):
        try:
            import transformers
        except ImportError as e:
            raise MissingDependencyError(
                f"the AltCLIP reference needs transformers, which is not installed ({e}); "
                f"install it with: {TRANSFORMERS_HINT}",
                package="transformers",
            ) from e
        self.name = name
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        major = int(transformers.__version__.split(".")[0])
        # the PIL image backend: what AltCLIP's original processor ran (transformers 5 defaults to torchvision)
        backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
        self.processor = transformers.AltCLIPProcessor.from_pretrained(str(folder), local_files_only=True, **backend)
        self.model = (
            transformers.AltCLIPModel.from_pretrained(str(folder), local_files_only=True).float().to(self.device).eval()
        )

    @staticmethod
    def _projected(out) -> torch.Tensor:
        # transformers 4 returns the projected tensor; 5 returns an output whose pooler_output is it
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The processor's pixels, then get_image_features, in batches."""
        outs = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                px = self.processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")["pixel_values"]
                outs.append(
                    normalise(self._projected(self.model.get_image_features(pixel_values=px.to(self.device))).cpu())
                )
        return torch.cat(outs)

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """The processor's tokenizer (padded and truncated to 77, its attention mask), then get_text_features."""
        enc = self.processor(
            text=[str(c) for c in captions],
            padding="max_length",
            truncation=True,
            max_length=ALTCLIP_CONTEXT_LENGTH,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
            )
        return normalise(self._projected(out).cpu())


# the backends whose models have an independent reference implementation here (parity-<model> cases)
REFERENCED_BACKENDS = ("native", "altclip")


def reference_source(card: ModelCard, weights: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
    """The reference feature source for ``card``'s weights; MissingDependencyError (naming the package) when it is missing."""
    if card.adapter == "native":
        return CnClipReference(card.arch, weights, device=device, batch_size=batch_size)
    if card.adapter == "altclip":
        return TransformersAltCLIPReference(weights, device=device, batch_size=batch_size)
    raise ValueError(f"no reference implementation is known for adapter {card.adapter!r} (model {card.name})")


class ReferenceEncoder:
    """cn_clip's CLIP in fp32 with cn_clip's image transform, tokenizer and text normalisation, behind the Encoder interface.

    Calibration (``qaclip calibrate``) runs it through the suite's own data reading and metrics (proven equal
    to the reference scripts by the metric and differential tests) to measure how far the reference model
    itself lands from ours on the same data.
    """

    def __init__(self, checkpoint: str | Path, arch: str, name: str = "cn_clip", device: str = "cpu"):
        ref_model, clip, ref_data = _import_cn_clip()
        CLIP, preprocess_text = ref_model.CLIP, ref_data._preprocess_text
        with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its configuration
            model = CLIP(**reference_kwargs(arch))
        # the checkpoint as its eval scripts load it: module. stripped, bert.pooler dropped, fp32, strict
        model.load_state_dict({k: v.float() for k, v in read_state_dict(checkpoint).items()})
        self.model = model.float().eval().to(resolve_device(device))
        self.name = name
        self.dtype = torch.float32
        self._tokenize, self._text = clip.tokenize, preprocess_text
        self.preprocess = clip.image_transform(arch_config(arch).vision.image_size)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The reference's normalisation and tokenizer (context length 52)."""
        return self._tokenize([self._text(str(t)) for t in texts], context_length=52)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features of the reference model."""
        return self.model.encode_image(images.to(self.device))

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of the reference model."""
        return self.model.encode_text(tokens.to(self.device))
