"""An ONNX export run by ONNX Runtime, behind the :class:`~qaclip_harness.backends.base.Encoder` interface.

``load`` exports the checkpoint into the cache (:mod:`qaclip_harness.export.cache`, keyed by the
checkpoint's sha256, opset, precision, the project's source and the exporting libraries' versions)
and opens it with the execution provider of the device: CPU, or CUDA with ``onnxruntime-gpu``. A
cached export is used only when its files hash to its manifest and ONNX Runtime reproduces, on
this device, the canary recorded when it was made. Preprocessing and tokenisation
are the package's own, with the resolution and context length the export's manifest records.
Needs the ``onnx`` extra (``pip install 'qaclip-core[onnx]'``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from qaclip_core.model.clip import CLIP
from qaclip_core.registry import ModelCard
from qaclip_core.tokenizer import preprocess_text, tokenize
from qaclip_core.transforms import MEAN, STD, image_transform
from qaclip_harness.errors import ExportError, ExportParityError, UnsupportedError

PathLike = Union[str, "os.PathLike[str]"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class OnnxEncoder:
    """The image and text models of one export, as ONNX Runtime sessions."""

    def __init__(
        self,
        directory: PathLike,
        device: str | torch.device = "auto",
        name: str | None = None,
        checkpoint_sha256: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        verify_files: bool = True,
    ):
        from qaclip_harness.export.manifest import read_manifest
        from qaclip_harness.export.runtime import resolve_providers, session

        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        where = self.directory / "manifest.json"
        if checkpoint_sha256 is not None and manifest.checkpoint_sha256 != checkpoint_sha256.lower():
            raise ExportError(
                f"{where}: exported from the checkpoint with sha256 {manifest.checkpoint_sha256}, "
                f"not the one asked for ({checkpoint_sha256.lower()}); export this checkpoint again"
            )
        if precision is not None and manifest.precision != precision:
            raise ExportError(
                f"{where}: precision {manifest.precision}, {precision} asked for; export again with --precision {precision}"
            )
        if manifest.precision not in DTYPES:
            raise ExportError(f"{where}: precision {manifest.precision!r}; the ONNX backend runs {', '.join(DTYPES)}")
        norm = manifest.normalisation
        if not (np.allclose(norm.get("mean", ()), MEAN, atol=0) and np.allclose(norm.get("std", ()), STD, atol=0)):
            raise ExportError(f"{where}: normalisation {norm} is not this package's (mean {MEAN}, std {STD})")
        if verify_files:  # False only right after the export cache hashed every file
            manifest.verify_files(self.directory)
        self.manifest = manifest
        self.name = name or manifest.model
        self.context_length = manifest.context_length
        self.image_size = manifest.resolution
        self.logit_scale = float(manifest.logit_scale)
        self._device, providers = resolve_providers(device)
        self._dtype = DTYPES[manifest.precision]
        towers = manifest.towers
        self._image = session(self.directory / towers["image"]["file"], providers, threads)
        self._text = session(self.directory / towers["text"]["file"], providers, threads)
        self._image_input = towers["image"]["input"]["name"]
        self._text_input = towers["text"]["input"]["name"]
        self._max_sequence = int(towers["text"]["input"].get("max_sequence", self.context_length))
        self.preprocess = image_transform(self.image_size)

    @property
    def device(self) -> torch.device:
        """Where ONNX Runtime runs the models."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Precision of the exported weights and outputs."""
        return self._dtype

    @property
    def providers(self) -> list:
        """The execution providers the sessions use."""
        return self._image.get_providers()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Lower-case, normalise quotes, WordPiece (as the native encoder), padded to the export's context length."""
        return tokenize([preprocess_text(str(t)) for t in texts], context_length=self.context_length)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] in the export's precision (on the CPU)."""
        want = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"{self.name}: the image model takes [N, {want[0]}, {want[1]}, {want[2]}] (resolution {self.image_size}), "
                f"got {list(images.shape)}"
            )
        if not len(images):
            return torch.empty(0, self.manifest.embed_dim, dtype=self.dtype)
        pixels = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (out,) = self._image.run(None, {self._image_input: pixels})
        return torch.from_numpy(out)

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [N, D] in the export's precision; trailing all-padding columns are dropped first."""
        from qaclip_core.model.clip import trim_padding

        if tokens.dim() != 2:
            raise ValueError(f"{self.name}: the text model takes [N, L] token ids, got {list(tokens.shape)}")
        if not len(tokens):
            return torch.empty(0, self.manifest.embed_dim, dtype=self.dtype)
        # the sequence axis is dynamic: padding masked in every row changes nothing but the work
        ids = trim_padding(tokens.detach().to("cpu", torch.long))
        if ids.shape[1] > self._max_sequence:
            raise ValueError(
                f"{self.name}: token sequences of length {ids.shape[1]} exceed the model's {self._max_sequence} positions"
            )
        (out,) = self._text.run(None, {self._text_input: np.ascontiguousarray(ids.numpy())})
        return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_harness.backends)


def load(
    card: ModelCard,
    path: PathLike,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    compile: bool = False,
    opset: int | None = None,
    cache_mode: str | None = None,
) -> OnnxEncoder:
    """Export ``path`` into the cache (or reuse a valid export there, canary checked) and open it with ONNX Runtime.

    ``cache_mode`` (use, read-only, refresh, off; default from the QACLIP_* cache variables) is the suite's.
    """
    from qaclip_harness.export.deps import require

    if card.adapter != "native":
        raise UnsupportedError(
            f"{card.name}: the onnx backend exports qaclip_core models; this is a {card.adapter} model"
        )
    require()  # the one-line ImportError naming the extra, before any work
    if compile:
        warnings.warn(f"{card.name}: compile does not apply to the onnx backend; ignored", UserWarning, stacklevel=3)
    if precision not in DTYPES:
        raise UnsupportedError(f"{card.name}: the onnx backend exports {' and '.join(DTYPES)}, not {precision}")
    make = {"arch": card.arch, "precision": precision, "opset": opset, "name": card.name}
    return open_cached(path, make, device, card.name, cache_mode)


def load_checkpoint_encoder(
    checkpoint: PathLike,
    arch: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    opset: int | None = None,
    cache_mode: str | None = None,
) -> OnnxEncoder:
    """A local checkpoint file exported into the cache (``arch`` inferred from its weights when None) and opened."""
    from qaclip_harness.export.deps import require

    require()
    if precision not in DTYPES:
        raise ExportError(f"{checkpoint}: the onnx backend exports {' and '.join(DTYPES)}, not {precision}")
    make = {"arch": arch, "precision": precision, "opset": opset, "name": Path(checkpoint).name}
    return open_cached(checkpoint, make, device, Path(checkpoint).name, cache_mode)


def runtime_canary(encoder: OnnxEncoder) -> dict[str, np.ndarray]:
    """The probe set's features through ONNX Runtime (images in batches of 7, captions in batches of 16): the export's canary."""
    from qaclip_harness.cache.pixels import quiet_probe
    from qaclip_harness.probe.probe_set import load_probe_set

    probe = load_probe_set()
    with quiet_probe():
        images = torch.stack([encoder.preprocess(im) for im in probe.images])
    tokens = encoder.tokenize(list(probe.captions))
    return {
        "images": torch.cat([encoder.encode_image(images[s : s + 7]) for s in range(0, len(images), 7)]).numpy(),
        "texts": torch.cat([encoder.encode_text(tokens[s : s + 16]) for s in range(0, len(tokens), 16)]).numpy(),
    }


def open_cached(
    checkpoint: PathLike, make: dict[str, Any], device: str | torch.device, name: str, cache_mode: str | None
) -> OnnxEncoder:
    """The export of ``checkpoint`` from the cache (files hashed, canary through ONNX Runtime required), else a fresh one."""
    from qaclip_harness.cache.keys import device_kind
    from qaclip_harness.export.cache import cached_export, canary_digest

    entry = cached_export(checkpoint, verify=verify_export, mode=cache_mode, **make)

    def opened(found: Any) -> OnnxEncoder:
        return OnnxEncoder(
            found.directory,
            device=device,
            name=name,
            checkpoint_sha256=found.sha256,
            precision=make["precision"],
            verify_files=False,
        )

    encoder = opened(entry)
    kind = f"{device_kind(encoder.device)} {','.join(encoder.providers)}"
    digest = canary_digest(runtime_canary(encoder))
    stored = entry.canary(kind)
    if entry.reused and stored is not None and stored != digest:
        msg = (
            f"ONNX export {entry.directory} checks out but ONNX Runtime does not reproduce its canary on {kind}: "
            "something the key does not name changed; exported again"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        entry = cached_export(checkpoint, verify=verify_export, mode="refresh" if entry.writes else "off", **make)
        encoder = opened(entry)
        digest = canary_digest(runtime_canary(encoder))
    entry.record_canary(kind, digest)
    return encoder


def verify_export(directory: Path, model: CLIP) -> dict[str, Any]:
    """Run a fresh export with ONNX Runtime (CPU) against the eager ``model``; ExportError with the table when it is off.

    The exporter calls it (``verify=``) before it installs the folder, so no export that disagrees is ever used.
    """
    from qaclip_harness.backends.native import NativeEncoder
    from qaclip_harness.export.manifest import read_manifest
    from qaclip_harness.export.parity import compare

    manifest = read_manifest(directory)
    try:
        ours = OnnxEncoder(directory, device="cpu", name=manifest.model)
        # batch 3 and trimmed captions: sizes other than the export's examples (batch 2, 52 tokens)
        report = compare(
            ours, NativeEncoder(model, name=manifest.model), manifest.precision, batches=(3,), model=manifest.model
        )
    except ExportError:
        raise
    except Exception as e:  # onnxruntime's run-time failures (an operator it cannot run at this opset, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(
            f"the export of {manifest.model} at opset {manifest.opset} does not run in ONNX Runtime: "
            f"{type(e).__name__}: {first[:400]}"
        ) from e
    towers = list(report.towers)
    if not all(t.ok for t in towers):
        raise ExportParityError(
            f"the export of {manifest.model} at opset {manifest.opset} disagrees with PyTorch:\n{report.table()}"
        )
    return {
        "runtime": "onnxruntime CPU",
        "batch": 3,
        **{f"{t.tower}_max_abs_diff": t.max_abs_diff for t in towers},
        **{f"{t.tower}_min_cosine": t.min_cosine for t in towers},
    }
