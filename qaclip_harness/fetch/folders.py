"""Fetching transformers-format model folders (config, processor files, tokenizer, weights) from the Hub.

One helper for every backend that loads a folder (AltCLIP, ChineseCLIP): the card's repo is
downloaded into ``<download_root>/<repo name>`` with ``huggingface_hub.snapshot_download``,
restricted to the files the backend needs (one set of weights, safetensors preferred; no
README, no original ``.pt`` checkpoint that some repos hold beside the transformers files).
Downloaded LFS files are checked against the sha256 the Hub lists, under a file lock, and a
complete folder is final (no request per load, offline runs work). Offline mode and an
unreachable host fail at once with instructions to install the folder by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Union

from qaclip_core.errors import ChecksumError, DownloadError
from qaclip_core.registry import ModelCard

PathLike = Union[str, Path]

# Preferred first: safetensors loads without pickle; a repo holding both is fetched once.
WEIGHT_PATTERNS = [
    ("model.safetensors", ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]),
    ("model.safetensors.index.json", ["model.safetensors.index.json", "model-*.safetensors"]),
    ("pytorch_model.bin", ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]),
    ("pytorch_model.bin.index.json", ["pytorch_model.bin.index.json", "pytorch_model-*.bin"]),
]
# transformers 5 writes the image processor settings into processor_config.json
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class FolderLayout:
    """The files a transformers-format folder of one model family needs."""

    family: str  # for messages: "AltCLIP", "ChineseCLIP"
    config_files: tuple[str, ...]  # fetched when the repo lists them (weights are chosen separately)
    tokenizer_files: tuple[str, ...]  # at least one must be present
    manual_files: str  # how the manual instructions name the non-weight files

    def complete(self, folder: PathLike) -> bool:
        """Whether ``folder`` holds a config, image processor config, tokenizer and weights."""
        folder = Path(folder)
        return (
            (folder / "config.json").is_file()
            and any((folder / f).is_file() for f in IMAGE_PROCESSOR_FILES)
            and any((folder / f).is_file() for f in self.tokenizer_files)
            and weights_present(folder)
        )

    def manual_instructions(self, repo: str, revision: str | None, local_dir: Path) -> str:
        """How to put the folder in place by hand."""
        rev = revision or "main"
        return (
            f"To install it by hand, download {self.manual_files} and the weights "
            f"(model.safetensors or pytorch_model.bin) from https://huggingface.co/{repo}/tree/{rev} into {local_dir}, "
            f"e.g. `hf download {repo} --revision {rev} --local-dir {local_dir}` on a machine with network access"
        )


def weights_present(folder: PathLike) -> bool:
    """Whether ``folder`` holds a single weights file, or an index whose every shard is present."""
    folder = Path(folder)
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
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


def choose_weights(names: Sequence[str]) -> list[str]:
    """Patterns of the one set of weights to fetch from a repo listing ``names`` (empty: none)."""
    present = set(names)
    for marker, patterns in WEIGHT_PATTERNS:
        if marker in present:
            return patterns
    return []


def verify_lfs(local_dir: Path, siblings: Sequence[Any], names: Sequence[str]) -> None:
    """Check downloaded LFS files against the sha256 the Hub lists; remove and raise on a mismatch."""
    from qaclip_core.pretrained import sha256_file

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


def folder_for(card: ModelCard, download_root: PathLike | None = None) -> Path:
    """Where the card's folder lives: ``<download_root or cache>/<repo name>``."""
    from qaclip_core.pretrained import cache_root

    if not card.hub_repo:
        raise DownloadError(f"model {card.name!r} has no hub repo to fetch from")
    root = Path(download_root).expanduser() if download_root is not None else cache_root()
    return root / card.hub_repo.split("/")[-1]


def fetch_folder(
    card: ModelCard, layout: FolderLayout, download_root: PathLike | None = None, endpoint: str | None = None
) -> Path:
    """Folder of the card's transformers-format model, downloading what is missing.

    ``endpoint`` overrides the Hub address for this call (a local hub); otherwise
    ``QACLIP_HF_ENDPOINT`` / ``HF_ENDPOINT`` are read now.
    """
    from filelock import FileLock

    # looked up at call time, so that tests may replace them on the module
    from qaclip_core import pretrained as hub

    local_dir = folder_for(card, download_root)
    if layout.complete(local_dir):
        return local_dir
    repo = str(card.hub_repo)  # folder_for refused a card without one
    ep = endpoint.rstrip("/") if endpoint else hub.hub_endpoint()
    where = ep or hub.PUBLIC_HUB
    manual = layout.manual_instructions(repo, card.hub_revision, local_dir)

    def failed(reason: str) -> DownloadError:
        return DownloadError(
            f"could not fetch {card.name!r} from the Hugging Face repo {card.hub_repo!r} "
            f"(revision {card.hub_revision or 'main'}, endpoint {where}): {reason}. " + manual
        )

    if hub.is_offline():
        raise failed(f"offline mode is on (HF_HUB_OFFLINE) and {local_dir} is not complete")
    unreachable = hub.unreachable(where)
    if unreachable:
        raise failed(unreachable)
    import huggingface_hub

    lock_path = local_dir / ".cache" / "qaclip" / "locks" / "snapshot.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        if layout.complete(local_dir):
            return local_dir
        try:
            info = huggingface_hub.HfApi(endpoint=ep).model_info(repo, revision=card.hub_revision, files_metadata=True)
            siblings = list(info.siblings or [])
            names = [s.rfilename for s in siblings]
            weights = choose_weights(names)
            if not weights:
                raise DownloadError(
                    f"the Hugging Face repo {card.hub_repo!r} lists no model.safetensors or pytorch_model.bin; "
                    + manual
                )
            huggingface_hub.snapshot_download(
                repo_id=repo,
                revision=card.hub_revision,
                local_dir=str(local_dir),
                allow_patterns=list(layout.config_files) + weights,
                endpoint=ep,
            )
        except DownloadError:
            raise
        except hub.hub_exceptions() as exc:
            raise failed(hub.failure_reason(exc).rstrip(".")) from exc
        verify_lfs(local_dir, siblings, [n for n in names if any(fnmatch(n, p) for p in weights)])
        if not layout.complete(local_dir):
            raise DownloadError(
                f"{card.hub_repo} was downloaded into {local_dir} but the folder lacks a config, image processor "
                f"config, tokenizer or weights. " + manual
            )
    return local_dir
