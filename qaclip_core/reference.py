"""The reference implementation (``cn_clip`` 1.6.0) behind the Encoder interface, as a measuring oracle.

Used by calibration (``python -m qaclip_core calibrate``) to measure how far the reference model
itself lands from our model on the same data, with the reference's own preprocessing, tokenizer
and text normalisation; the data reading and metrics are the suite's (proven equal to the
reference scripts by ``tests/test_metrics.py`` and ``tests/test_differential.py``). Nothing of
cn_clip is part of this package: it is imported when used, and its absence is a
MissingDependencyError naming how to install it.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Sequence, Union

import torch

from .checkpoint import read_state_dict, resolve_device
from .model.config import arch_config, reference_kwargs



def _cn_clip():
    """cn_clip's utils (tokenize, image_transform), CLIP class and text normalisation (one import helper, the gates')."""
    from .gates.reference import _import_cn_clip

    ref_model, ref_utils, ref_data = _import_cn_clip()
    return ref_utils, ref_model.CLIP, ref_data._preprocess_text


class ReferenceEncoder:
    """cn_clip's CLIP in fp32 with cn_clip's image transform, tokenizer and text normalisation."""

    def __init__(self, checkpoint: Union[str, Path], arch: str, name: str = "cn_clip", device: str = "cpu"):
        clip, CLIP, preprocess_text = _cn_clip()
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
