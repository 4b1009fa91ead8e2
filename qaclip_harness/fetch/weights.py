"""A model card's weights on disk, whatever their format: a reference ``.pt`` file, or a transformers folder.

Each card names its backend in ``adapter``; the weights it needs are fetched here, before any
model is loaded, so that loading and evaluation only ever see local paths. Transformers-format
folders need ``transformers`` to be loaded at all, so its absence is reported before any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from qaclip_core.errors import DownloadError
from qaclip_core.pretrained import cache_root, fetch_checkpoint
from qaclip_core.registry import ModelCard
from qaclip_harness import optional
from qaclip_harness.documents import DocumentError, read_yaml
from qaclip_harness.fetch.folders import FolderLayout, fetch_folder
from qaclip_harness.fetch.urls import fetch_url

PathLike = Union[str, Path]

LAYOUTS_FILE = Path(__file__).with_name("layouts.yaml")


def load_layouts(path: Path = LAYOUTS_FILE) -> dict[str, FolderLayout]:
    """The transformers folder layout of each adapter, from ``layouts.yaml`` (the files each family's folder needs)."""
    doc = read_yaml(path)
    layouts = {}
    for adapter, entry in doc["layouts"].items():
        files = doc["files"].get(entry["files"])
        if files is None:
            known = ", ".join(sorted(doc["files"]))
            raise DocumentError(f"{path}: layout {adapter} names the file set {entry['files']!r}; known: {known}")
        layouts[adapter] = FolderLayout(
            family=entry["family"],
            config_files=tuple(files["config_files"]),
            tokenizer_files=tuple(files["tokenizer_files"]),
            manual_files=files["manual_files"],
        )
    return layouts


LAYOUTS: dict[str, FolderLayout] = load_layouts()

# the extra that installs transformers for each folder family, and the version it needs
_TRANSFORMERS = {
    "chineseclip": ("ChineseCLIP", "chineseclip", optional.MIN_TRANSFORMERS),
    "altclip": ("AltCLIP", "altclip", optional.MIN_TRANSFORMERS),
    "zhclip": ("ZH-CLIP", "zhclip", optional.MIN_TRANSFORMERS),
}


def folder_complete(card_adapter: str, folder: PathLike) -> bool:
    """Whether ``folder`` holds everything a transformers folder of this adapter needs (config, processor, tokenizer, weights)."""
    return LAYOUTS[card_adapter].complete(folder)


def fetch_weights(card: ModelCard, download_root: PathLike | None = None, endpoint: str | None = None) -> Path:
    """Local path of ``card``'s weights (a file, or a folder for transformers-format models), fetched when absent.

    ``endpoint`` overrides the Hub address for this call (the fixture's local hub). A card whose
    ``checkpoint`` names a local path gets that path, checked against the card's size and sha256.
    """
    if card.checkpoint is not None:
        return local_checkpoint(card)
    if card.adapter in LAYOUTS:
        family, extra, minimum = _TRANSFORMERS[card.adapter]
        optional.import_transformers(family, f"pip install 'qaclip-core[{extra}]'", minimum, extra=extra)
        return fetch_folder(card, LAYOUTS[card.adapter], download_root=download_root, endpoint=endpoint)
    if card.adapter != "native" and not card.hub_filename and not card.url:
        raise DownloadError(
            f"model {card.name!r}: backend {card.adapter!r} has no folder layout to fetch, so its card must name "
            "a local checkpoint, or a hub repo with a filename"
        )
    if not card.hub_repo and card.url:  # a checkpoint published at a plain URL only
        root = Path(download_root).expanduser() if download_root is not None else cache_root()
        return fetch_url(card.url, root / card.filename, sha256=card.sha256)
    return fetch_checkpoint(card, download_root=download_root, endpoint=endpoint)


def local_checkpoint(card: ModelCard) -> Path:
    """The local checkpoint (file or folder) a card names; absent is a DownloadError (the case skips), a mismatch a ChecksumError."""
    from qaclip_core.errors import ChecksumError
    from qaclip_core.pretrained import cached_sha256, check_size
    from qaclip_core.registry import card_source

    path = Path(str(card.checkpoint))
    source = card_source(card.name)
    named = f"model {card.name!r} (card {source})" if source else f"model {card.name!r}"
    if not path.exists():
        raise DownloadError(f"{named}: checkpoint {path} not found; put it there or change the card's checkpoint")
    if path.is_file():
        check_size(path, card.size, named)
        if card.sha256 is not None:
            actual = cached_sha256(path)
            if actual != card.sha256:
                raise ChecksumError(
                    f"{path}: sha256 {actual}, but {named} pins {card.sha256}: not the checkpoint the card describes"
                )
    elif card.sha256 is not None or card.size is not None:
        raise ChecksumError(f"{named}: sha256 and size pin a file, but checkpoint {path} is a folder")
    return path
