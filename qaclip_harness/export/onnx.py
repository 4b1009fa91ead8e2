"""ONNX export of a qaclip_core model: an image and a text model with dynamic axes, and a manifest.

The exporter is torch's own, as torch 2.9+ means it to be used: ``torch.onnx.export(...,
dynamo=True)``, which captures the model with ``torch.export`` and translates it with
onnxscript. Measured here against the TorchScript exporter (``dynamo=False``) on RN50,
ViT-B/16 and the fixture, both give features within 2e-7 of eager at opset 20, but:

* the TorchScript exporter is deprecated (a DeprecationWarning since torch 2.9) and traces:
  the position-embedding length check of BERT becomes a TracerWarning and a constant, where
  ``torch.export`` turns it into a range on the sequence axis (1 to the model's positions);
* the dynamo exporter's graphs are smaller after its optimiser (ViT-B/16 image: 480 nodes
  against 1,013; RN50 image: 165 against 265);
* below opset 17 neither works for these models (SDPA needs 14, LayerNormalization 17; the
  TorchScript exporter fails on SDPA at 13, Chinese-CLIP's own opset, as its issue #256 says).
  The dynamo exporter down-converts from 18 and *falls back silently* to 18 when that fails,
  so the opset of every written model is checked here.

It costs export time (RN50 26 s against 9 s, ViT-B/16 50 s against 19 s on 2 cores), paid
once per checkpoint: the backend caches exports (:mod:`qaclip_harness.export.cache`).

The packed text fast path (data-dependent shapes) does not export; the text model is the plain
padded path (``CLIP.text_fast_path = False``), which is tested equal to it, with the mask
computed from the ids inside the graph. The vision fast paths (token 0 only in the last block)
have static shapes and are exported as they are. Every export is checked before it is written
out: ONNX Runtime (CPU) runs both models on inputs of another batch size and sequence length
than the export's examples, against the eager model, within the gates of ``parity.yaml``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import torch
from torch import nn

from qaclip_core.model.clip import CLIP, PAD_ID
from qaclip_core.tokenizer import CONTEXT_LENGTH
from qaclip_core.transforms import MEAN, STD
from qaclip_harness.errors import ExportError
from qaclip_harness.export.deps import require
from qaclip_harness.export.manifest import MANIFEST_NAME, Manifest, Verifier
from qaclip_harness.files import OutputError, remove_stale_temporaries, temp_path

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_OPSET = 20  # torch 2.14's default for the dynamo exporter
MIN_OPSET = 17  # LayerNormalization is an ONNX operator from opset 17 (SDPA alone would need 14)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
EXPORTER = "torch.onnx.export(dynamo=True)"


class ImageTower(nn.Module):
    """``CLIP.encode_image`` as a module of its own: fp32 images [N, 3, R, R] -> features [N, D]."""

    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features in the model's precision."""
        return self.model.encode_image(image)


class TextTower(nn.Module):
    """``CLIP.encode_text`` (plain padded path): int64 ids [N, L] -> features [N, D]."""

    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features; the mask (ids != 0) is computed in the graph."""
        return self.model.encode_text(input_ids)


@contextlib.contextmanager
def padded_text_path(model: CLIP) -> Iterator[CLIP]:
    """Run ``model``'s text tower on the plain padded path inside the block (restored after)."""
    before = model.text_fast_path
    model.text_fast_path = False
    try:
        yield model
    finally:
        model.text_fast_path = before


def precision_of(model: CLIP) -> str:
    """``fp32`` or ``fp16`` from the weights' dtype; ExportError for others."""
    for name, dtype in PRECISIONS.items():
        if model.dtype == dtype:
            return name
    raise ExportError(f"ONNX export takes fp32 or fp16 models, this one is {model.dtype}")


def check_opset(opset: int) -> int:
    """``opset`` when the exporter, onnx and the installed onnxruntime all handle it; ExportError otherwise."""
    onnx, ort = require("onnx", "onnxruntime")
    from qaclip_harness.export.runtime import runtime_max_opset

    top = min(onnx.defs.onnx_opset_version(), runtime_max_opset())
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an integer, got {opset!r}")
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is too old for these models: LayerNormalization needs opset {MIN_OPSET} "
            f"(and scaled_dot_product_attention 14); use {MIN_OPSET} to {top} (default {DEFAULT_OPSET})"
        )
    if opset > top:
        raise ExportError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} (up to {onnx.defs.onnx_opset_version()}) "
            f"or onnxruntime {ort.__version__} (up to {runtime_max_opset()}) support; use {MIN_OPSET} to {top}"
        )
    return opset


def _export_tower(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_name: str,
    dynamic: dict[int, object],
    opset: int,
) -> None:
    """Export one tower with ``torch.onnx.export(dynamo=True)`` and save it with its weights beside it."""
    out = io.StringIO()
    quiet = logging.getLogger("onnxscript")  # its optimiser logs skipped foldings as warnings
    level = quiet.level
    try:
        # the exporter prints its progress on stdout and warns about things that do not concern us
        with torch.no_grad(), contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet.setLevel(logging.ERROR)
            program = torch.onnx.export(
                module.eval(),
                (example,),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={input_name: dynamic},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            assert program is not None  # dynamo=True always returns the program
            program.save(os.fspath(path), external_data=True)
    except OSError as e:  # a full disk or a size limit while the model and its weights are written
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except Exception as e:  # the exporter raises many types (torch._dynamo, onnxscript, ...)
        written = _os_error(e)
        if written is not None:
            raise OutputError(f"cannot write {path}: {written.strerror or written}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"exporting {path.name} failed: {type(e).__name__}: {first[:500]}") from e
    finally:
        quiet.setLevel(level)


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError at the root of an exporter's exception, if any (it wraps what the file system said)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _file_records(directory: Path) -> dict[str, dict[str, object]]:
    from qaclip_core.pretrained import sha256_file

    return {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }


def export_model(
    model: CLIP,
    out_dir: PathLike,
    *,
    name: str = "model",
    opset: int = DEFAULT_OPSET,
    checkpoint_sha256: str | None = None,
    checkpoint_file: str | None = None,
    verify: Verifier | None = None,
) -> Manifest:
    """Export ``model`` (fp32 or fp16, any device) into ``out_dir``: ``image.onnx``, ``text.onnx``, their weights and ``manifest.json``.

    The folder is written through a temporary sibling and its manifest goes in last, so an
    interrupted export never leaves a folder that reads as complete.
    """
    onnx, onnxscript, ort = require("onnx", "onnxscript", "onnxruntime")
    import qaclip_core

    opset = check_opset(opset)
    precision = precision_of(model)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cpu_model = model if model.visual.conv1.weight.device.type == "cpu" else _cpu_copy(model)
    res, length = cpu_model.image_size, CONTEXT_LENGTH
    max_positions = cpu_model.bert.embeddings.position_embeddings.num_embeddings
    # The export is made in a temporary sibling named after this process (files.temp_path): a
    # killed exporter's folder (megabytes to gigabytes) is recognised and removed by the next one.
    remove_stale_temporaries(out_dir.parent)
    tmp = temp_path(out_dir, folder=True)
    shutil.rmtree(tmp, ignore_errors=True)  # this very process's, from an export that failed before its cleanup
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write the ONNX export {out_dir}: cannot create {tmp} ({e.strerror or e})") from None
    try:
        from torch.export import Dim

        from qaclip_core.tokenizer import tokenize

        batch = Dim("batch", min=1)
        # examples of batch 2: torch.export specialises a dimension whose example is 0 or 1
        images = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))
        ids = tokenize(["一只猫", "桌子上放着一碗热气腾腾的牛肉面"], context_length=length)
        _export_tower(ImageTower(cpu_model), images, tmp / IMAGE_FILE, "image", "image_features", {0: batch}, opset)
        with padded_text_path(cpu_model):
            _export_tower(
                TextTower(cpu_model),
                ids,
                tmp / TEXT_FILE,
                "input_ids",
                "text_features",
                {0: batch, 1: Dim("sequence", min=1, max=max_positions)},
                opset,
            )
        from qaclip_harness.export.runtime import model_opset

        for file in (IMAGE_FILE, TEXT_FILE):
            got = model_opset(tmp / file)
            if got != opset:
                raise ExportError(
                    f"the exporter wrote {file} at opset {got}, not the {opset} asked for "
                    f"(it could not convert the graph); use opset {got} or another one"
                )
        dtype = str(precision_of(cpu_model)).replace("fp", "float")
        dim = cpu_model.embed_dim
        manifest = Manifest(
            model=name,
            arch=cpu_model.arch.name,
            precision=precision,
            opset=opset,
            checkpoint_sha256=checkpoint_sha256.lower() if checkpoint_sha256 else None,
            checkpoint_file=checkpoint_file,
            resolution=res,
            context_length=length,
            embed_dim=dim,
            normalisation={
                "mean": list(MEAN),
                "std": list(STD),
                "resize": f"bicubic squash to {res}x{res}, then RGB",
                "scale": "pixel / 255, then (x - mean) / std per channel",
            },
            logit_scale=float(cpu_model.logit_scale.detach().float().exp()),
            towers={
                "image": {
                    "file": IMAGE_FILE,
                    "input": {"name": "image", "shape": ["batch", 3, res, res], "dtype": "float32"},
                    "output": {"name": "image_features", "shape": ["batch", dim], "dtype": dtype},
                },
                "text": {
                    "file": TEXT_FILE,
                    "input": {
                        "name": "input_ids",
                        "shape": ["batch", "sequence"],
                        "dtype": "int64",
                        "pad_id": PAD_ID,
                        "max_sequence": max_positions,
                    },
                    "output": {"name": "text_features", "shape": ["batch", dim], "dtype": dtype},
                },
            },
            files=_file_records(tmp),
            versions={
                "qaclip_core": qaclip_core.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxscript": onnxscript.__version__,
                "onnxruntime": ort.__version__,
            },
            exporter=EXPORTER,
        )
        manifest.write(tmp)
        if verify is not None:  # checked before the folder is installed: a disagreeing export is never used
            manifest.verification = verify(tmp, cpu_model)
            manifest.write(tmp)
        _install(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _cpu_copy(model: CLIP) -> CLIP:
    from qaclip_core.model.clip import create_model

    copy = create_model(model.arch.name).to(model.dtype)
    copy.load_state_dict({k: v.to("cpu") for k, v in model.state_dict().items()})
    return copy.eval()


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the files of ``tmp`` into ``out_dir``, removing an older manifest first and writing the new one last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for p in sorted(tmp.iterdir()):
        # digest sidecars written while verifying stay behind: the folder holds what the manifest lists
        if p.name != MANIFEST_NAME and not p.name.endswith(".sha256"):
            os.replace(p, out_dir / p.name)
    os.replace(tmp / MANIFEST_NAME, out_dir / MANIFEST_NAME)


def export_checkpoint(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    arch: str | None = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    checkpoint_sha256: str | None = None,
    verify: Verifier | None = None,
) -> Manifest:
    """Load ``checkpoint`` (strictly, as ``arch`` or the architecture its shapes say) in ``precision`` and export it."""
    from qaclip_core.checkpoint import load_checkpoint
    from qaclip_harness.fetch.digests import checkpoint_digest

    require()
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: ONNX exports are made in {' or '.join(PRECISIONS)}")
    check_opset(opset)  # before the checkpoint is read: a bad opset fails at once
    checkpoint = Path(checkpoint)
    model = load_checkpoint(checkpoint, arch, device="cpu", precision=precision)
    sha = checkpoint_sha256 or checkpoint_digest(checkpoint)
    return export_model(
        model,
        out_dir,
        name=name or checkpoint.stem,
        opset=opset,
        checkpoint_sha256=sha,
        checkpoint_file=checkpoint.name,
        verify=verify,
    )
