"""Reading checkpoints (untrusted input) and loading them strictly into a model."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, DeviceError
from .model.clip import CLIP, create_model
from .model.config import text_names, vision_names

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SHOW = 8  # key names quoted in an error message


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; a CUDA device this machine lacks is a DeviceError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device {device!r}: expected auto, cpu, cuda or cuda:N (or another torch device)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r}: this machine has no CUDA device (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); use 'cpu'"
            )
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            raise DeviceError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return dev


def resolve_dtype(precision: str | torch.dtype) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` (or a torch dtype) to a torch dtype."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[precision]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file, with ``module.`` stripped and ``bert.pooler.*`` dropped.

    Accepts the training code's dict (``{"epoch", "step", "name", "state_dict", ...}``) and a
    bare state dict. Loads with ``weights_only=True``: a checkpoint is untrusted input.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): an interrupted download? Delete it and fetch again"
        )
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} is not a weights-only PyTorch file ({_unpickler_detail(e)}): it is corrupt, or it "
            "holds pickled Python objects, which are refused because loading them could run code from the file"
        ) from e
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError for damaged files
        raise CheckpointError(
            f"checkpoint {path} ({size:,} bytes) cannot be read as a PyTorch checkpoint: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
            "(truncated or corrupt? delete it and fetch again)"
        ) from e
    return normalise_state_dict(obj, source=str(path))


def _unpickler_detail(err: BaseException) -> str:
    """The specific reason in torch's weights-only error (never its advice to load the file unsafely)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", text, flags=re.S)
    detail = " ".join(m.group(1).split()) if m else ""
    if not detail:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        detail = lines[0] if lines else type(err).__name__
    return detail


def normalise_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Extract the state dict from a checkpoint object and normalise its keys."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        keys = list(obj)[:_SHOW] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{source}: expected a dict with a 'state_dict' entry or a bare state dict of tensors, "
            f"got {type(obj).__name__}" + (f" with keys {keys}" if keys else "")
        )
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{source}: 'state_dict' is empty or not a dict ({type(sd).__name__})")
    out: dict[str, torch.Tensor] = {}
    for stored, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {stored!r} is a {type(value).__name__}, not a tensor")
        key = stored[len("module.") :] if stored.startswith("module.") else stored
        if key.startswith("bert.pooler."):
            continue
        out[key] = value
    return out


def infer_arch(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Guess ``VISION@TEXT`` from the shapes in a state dict (None when it does not look like CLIP)."""
    vision = _infer_vision(sd)
    text = _infer_text(sd)
    if vision is None or text is None:
        return None
    return f"{vision}@{text}"


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def _infer_vision(sd: Mapping[str, torch.Tensor]) -> str | None:
    from .model.config import vision_config

    if "visual.attnpool.c_proj.weight" in sd:
        layers = tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
        width = sd["visual.conv3.weight"].shape[0] if "visual.conv3.weight" in sd else None
        for name in vision_names():
            cfg = vision_config(name)
            if cfg.kind == "resnet" and cfg.layers == layers and cfg.width == width:
                return name
        return f"ModifiedResNet(layers={list(layers)}, width={width})"
    if "visual.conv1.weight" in sd and "visual.positional_embedding" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        depth = _count(sd, r"visual\.transformer\.resblocks\.(\d+)\.")
        tokens = sd["visual.positional_embedding"].shape[0]
        res = round((tokens - 1) ** 0.5) * patch
        embed = sd["visual.proj"].shape[1] if "visual.proj" in sd else None
        for name in vision_names():
            cfg = vision_config(name)
            if (
                cfg.kind == "vit"
                and cfg.width == width
                and cfg.patch_size == patch
                and cfg.layers == depth
                and cfg.image_size == res
                and cfg.embed_dim == embed
            ):
                return name
        return f"ViT(width={width}, patch={patch}, layers={depth}, resolution={res})"
    return None


def _infer_text(sd: Mapping[str, torch.Tensor]) -> str | None:
    from .model.config import text_config

    key = "bert.embeddings.word_embeddings.weight"
    if key not in sd:
        return None
    hidden = sd[key].shape[1]
    layers = _count(sd, r"bert\.encoder\.layer\.(\d+)\.")
    for name in text_names():
        cfg = text_config(name)
        if cfg.hidden_size == hidden and cfg.layers == layers:
            return name
    return f"BERT(hidden={hidden}, layers={layers})"


def _preview(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_state_dict_strict(model: CLIP, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``sd`` into ``model``; any missing, unexpected or mis-shaped key is a CheckpointError."""
    expected = model.state_dict()
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    mismatched = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    not_float = [
        f"{k} ({str(sd[k].dtype).replace('torch.', '')})"
        for k in sorted(set(sd) & set(expected))
        if expected[k].is_floating_point() and not sd[k].is_floating_point()
    ]
    if not_float:
        raise CheckpointError(
            f"{source}: {len(not_float)} weight(s) are not floating-point tensors: {'; '.join(not_float[:_SHOW])}; "
            "expected fp32, fp16 or bf16 weights (quantised or otherwise converted checkpoints are not supported)"
        )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:_SHOW])}")
        guess = infer_arch(sd)
        looks = f"; the checkpoint looks like {guess}" if guess else "; it does not look like a Chinese CLIP checkpoint"
        raise CheckpointError(f"{source} does not fit architecture {model.arch.name}: " + "; ".join(parts) + looks)
    model.load_state_dict(sd, strict=True)
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} weight(s) hold NaN or infinite values: {', '.join(bad[:_SHOW])}"
            + (f" (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else "")
            + "; the file is corrupt or came from a diverged training run"
        )


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the floating-point tensors of ``model`` that hold NaN or infinity."""
    bad = []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            # one reduction per tensor: a NaN or inf anywhere makes the sum non-finite (weights this
            # size cannot overflow fp32), without a boolean copy of every weight
            if t.is_floating_point() and not t.is_meta and not torch.isfinite(t.float().sum()):
                bad.append(name)
    return bad


class ArchitectureUnknownError(CheckpointError):
    """The architecture of a checkpoint could not be read from its shapes (``guess`` says what it looks like)."""

    def __init__(self, path: str | Path, guess: str | None):
        self.path, self.guess = Path(path), guess
        looks = f" (it looks like {guess})" if guess else " (it does not look like a Chinese CLIP checkpoint)"
        super().__init__(
            f"checkpoint {path}: cannot tell its architecture from the weights{looks}; pass arch='VISION@TEXT'"
        )


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype = "fp32",
) -> CLIP:
    """Build the model of ``arch`` (inferred from the weights when None) and load ``path`` strictly."""
    device = resolve_device(device)  # a device this machine lacks fails before gigabytes are read
    dtype = resolve_dtype(precision)
    sd = read_state_dict(path)
    if arch is None:
        arch = infer_arch(sd)
        if arch is None or "(" in arch:
            raise ArchitectureUnknownError(path, arch)
    model = create_model(arch, random_init=False)  # every tensor comes from the checkpoint
    load_state_dict_strict(model, sd, source=f"checkpoint {path}")
    return model.to(device=device, dtype=dtype).eval()
