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

import json
import os
import re
import warnings
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from ..checkpoint import resolve_device, resolve_dtype
from ..errors import CheckpointError, ChecksumError, DownloadError, MissingDependencyError
from ..registry import ModelCard

PathLike = Union[str, "os.PathLike[str]"]

MIN_TRANSFORMERS = "4.40"
INSTALL_HINT = "pip install 'qaclip-core[altclip]'"
CONTEXT_LENGTH = 77  # AltCLIP's examples and FlagAI's inference code truncate at 77 tokens

# Files of a transformers AltCLIP repo that loading needs (weights are chosen separately).
CONFIG_FILES = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
]
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# Preferred first: safetensors loads without pickle; a repo holding both is fetched once.
WEIGHT_PATTERNS = [
    ("model.safetensors", ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]),
    ("model.safetensors.index.json", ["model.safetensors.index.json", "model-*.safetensors"]),
    ("pytorch_model.bin", ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]),
    ("pytorch_model.bin.index.json", ["pytorch_model.bin.index.json", "pytorch_model-*.bin"]),
]


# --------------------------------------------------------------------------------------------
# transformers, lazily


def _version_tuple(version: str) -> Tuple[int, ...]:
    # leading release numbers only: "4.40.0.dev0" -> (4, 40, 0), "5.0.0rc1" -> (5, 0, 0)
    return tuple(int(n) for n in re.findall(r"\d+", re.match(r"^[\d.]*", version).group(0))[:3])


def import_transformers() -> Any:
    """The ``transformers`` module, or a MissingDependencyError (an ImportError) saying how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"AltCLIP models need the 'transformers' package (>= {MIN_TRANSFORMERS}), which is not installed "
            f"or cannot be imported ({e}); install it with: {INSTALL_HINT}",
            package="transformers", extra="altclip",
        ) from e
    if _version_tuple(transformers.__version__) < _version_tuple(MIN_TRANSFORMERS):
        raise MissingDependencyError(
            f"AltCLIP models need transformers >= {MIN_TRANSFORMERS}, found {transformers.__version__}; "
            f"upgrade with: {INSTALL_HINT}",
            package="transformers", extra="altclip",
        )
    return transformers


def pil_image_processor_class(transformers: Any) -> Any:
    """transformers' CLIP image processor on the PIL backend (AltCLIP's original preprocessing)."""
    # transformers 5 made CLIPImageProcessor the torchvision backend and moved the PIL one to
    # CLIPImageProcessorPil; in 4.x CLIPImageProcessor is the PIL one. AltCLIP's published numbers
    # come from the PIL resize, and the two differ by a grey level here and there.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _features(out: Any, what: str) -> torch.Tensor:
    """Projected features out of whatever ``get_*_features`` returned in this transformers version."""
    if isinstance(out, torch.Tensor):  # transformers 4.x
        return out
    # transformers 5: a BaseModelOutputWithPooling whose pooler_output is the projected embedding
    for key in (f"{what}_embeds", "pooler_output"):
        value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected return type {type(out).__name__} from AltCLIPModel.get_{what}_features")


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
        source = os.fspath(path_or_dir)
        local = Path(source).expanduser()
        if local.is_file():  # e.g. its config.json was passed
            local = local.parent
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise CheckpointError(f"{local} is not a transformers model folder: it has no config.json")
            source, kw = str(local), {"local_files_only": True}  # a folder on disk never touches the network
        elif os.sep in source or source.startswith((".", "~")) or source.count("/") > 1:
            raise CheckpointError(f"AltCLIP folder {source} does not exist")
        else:
            kw = {}  # a hub repo id: transformers resolves it through its own cache
        # transformers 4.56 renamed torch_dtype to dtype (and 5.x defaults to the saved dtype)
        dtype_kw = "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
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
        return _features(self.model.get_image_features(pixel_values=pixels), "image")

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [N, D] in the model's dtype; padding is masked, so trimming it changes nothing."""
        tokens = tokens.to(self.device, non_blocking=True).long()
        mask = self.attention_mask(tokens)
        if tokens.shape[1] > 1 and len(tokens):
            # Drop columns that are padding in every row: masked keys contribute nothing and the
            # position ids of real tokens do not depend on trailing padding, so only time is saved.
            used = mask.any(dim=0).nonzero()
            keep = int(used.max()) + 1 if len(used) else 1
            tokens, mask = tokens[:, :keep], mask[:, :keep]
        out = self.model.get_text_features(input_ids=tokens, attention_mask=mask)
        return _features(out, "text")


# --------------------------------------------------------------------------------------------
# fetching


def _weights_present(folder: Path) -> bool:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return True
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if shards and all((folder / s).is_file() for s in shards):
                return True
    return False


def altclip_folder_complete(folder: PathLike) -> bool:
    """Whether ``folder`` holds a config, image processor config, tokenizer and weights."""
    folder = Path(folder)
    return (
        (folder / "config.json").is_file()
        # transformers 5 writes the image processor settings into processor_config.json
        and any((folder / f).is_file() for f in IMAGE_PROCESSOR_FILES)
        and any((folder / f).is_file() for f in TOKENIZER_FILES)
        and _weights_present(folder)
    )


def _choose_weights(names: Sequence[str]) -> List[str]:
    present = set(names)
    for marker, patterns in WEIGHT_PATTERNS:
        if marker in present:
            return patterns
    return []


def _manual_instructions(repo: str, revision: Optional[str], local_dir: Path) -> str:
    rev = revision or "main"
    return (
        f"To install it by hand, download config.json, preprocessor_config.json, the tokenizer files "
        f"(tokenizer.json, tokenizer_config.json, special_tokens_map.json, sentencepiece.bpe.model) and the weights "
        f"(model.safetensors or pytorch_model.bin) from https://huggingface.co/{repo}/tree/{rev} into {local_dir}, "
        f"e.g. `hf download {repo} --revision {rev} --local-dir {local_dir}` on a machine with network access"
    )


def _verify_lfs(local_dir: Path, siblings: Sequence[Any], names: Sequence[str]) -> None:
    """Check downloaded LFS files against the sha256 the Hub lists; remove and raise on a mismatch."""
    from ..hub import sha256_file

    wanted = set(names)
    for sib in siblings:
        lfs = getattr(sib, "lfs", None)
        expected = getattr(lfs, "sha256", None) if lfs is not None else None
        path = local_dir / sib.rfilename
        if sib.rfilename not in wanted or not expected or not path.is_file():
            continue
        actual = sha256_file(path)
        if actual != expected.lower():
            path.unlink()
            # huggingface_hub's record of the download would otherwise vouch for the next, missing copy
            (local_dir / ".cache" / "huggingface" / "download" / f"{sib.rfilename}.metadata").unlink(missing_ok=True)
            raise ChecksumError(
                f"{sib.rfilename} from {local_dir.name}: sha256 mismatch: expected {expected} (the Hub's LFS record), "
                f"got {actual}; the downloaded file {path} was removed."
            )


def fetch_altclip(card: ModelCard, download_root: Optional[PathLike] = None) -> Path:
    """Folder of the card's transformers-format model (``download_root/<repo name>``), downloading what is missing."""
    from filelock import FileLock

    from ..hub import _PUBLIC_HUB, _endpoint, _hub_exceptions, _offline, _reason, _unreachable, cache_root

    if not card.hub_repo:
        raise DownloadError(f"model {card.name!r} has no hub repo to fetch from")
    root = Path(download_root).expanduser() if download_root is not None else cache_root()
    local_dir = root / card.hub_repo.split("/")[-1]
    # Once complete, a folder is final: no request per load, and offline runs work.
    if altclip_folder_complete(local_dir):
        return local_dir
    where = _endpoint() or _PUBLIC_HUB

    def failed(reason: str) -> DownloadError:
        return DownloadError(
            f"could not fetch {card.name!r} from the Hugging Face repo {card.hub_repo!r} "
            f"(revision {card.hub_revision or 'main'}, endpoint {where}): {reason}. "
            + _manual_instructions(card.hub_repo, card.hub_revision, local_dir)
        )

    if _offline():
        raise failed(f"offline mode is on (HF_HUB_OFFLINE) and {local_dir} is not complete")
    unreachable = _unreachable(where)
    if unreachable:
        raise failed(unreachable)
    from huggingface_hub import HfApi, snapshot_download

    lock_path = local_dir / ".cache" / "qaclip" / "locks" / "snapshot.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        if altclip_folder_complete(local_dir):
            return local_dir
        try:
            info = HfApi(endpoint=_endpoint()).model_info(card.hub_repo, revision=card.hub_revision, files_metadata=True)
            siblings = list(info.siblings or [])
            names = [s.rfilename for s in siblings]
            weights = _choose_weights(names)
            if not weights:
                raise DownloadError(
                    f"the Hugging Face repo {card.hub_repo!r} lists no model.safetensors or pytorch_model.bin; "
                    + _manual_instructions(card.hub_repo, card.hub_revision, local_dir)
                )
            patterns = CONFIG_FILES + weights
            snapshot_download(
                repo_id=card.hub_repo,
                revision=card.hub_revision,
                local_dir=str(local_dir),
                allow_patterns=patterns,
                endpoint=_endpoint(),
            )
        except DownloadError:
            raise
        except _hub_exceptions() as exc:
            raise failed(_reason(exc).rstrip(".")) from exc
        fetched = [n for n in names if any(fnmatch(n, p) for p in weights)]
        _verify_lfs(local_dir, siblings, fetched)
        if not altclip_folder_complete(local_dir):
            raise DownloadError(
                f"{card.hub_repo} was downloaded into {local_dir} but the folder lacks a config, image processor "
                f"config, tokenizer or weights. " + _manual_instructions(card.hub_repo, card.hub_revision, local_dir)
            )
    return local_dir


# --------------------------------------------------------------------------------------------
# the backend interface (see qaclip_core.adapters)


def fetch(card: ModelCard, download_root: Optional[PathLike] = None, endpoint: Optional[str] = None) -> Path:
    """The card's transformers folder, fetched when incomplete (``endpoint`` is read from the environment)."""
    return fetch_altclip(card, download_root=download_root)


def load(card: ModelCard, path: PathLike, device: Union[str, torch.device] = "auto", precision: str = "fp32",
         compile: bool = False) -> "AltCLIPEncoder":
    """Load the folder at ``path``; ``compile`` is not supported here and runs eagerly with a warning."""
    if compile:
        warnings.warn(f"{card.name}: compile applies to qaclip_core models only; running eagerly", UserWarning, stacklevel=3)
    return AltCLIPEncoder.from_pretrained(path, name=card.name, device=device, precision=precision)
