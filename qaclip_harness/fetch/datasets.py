"""Getting a dataset onto disk: a hub archive downloaded and unpacked atomically, a label file fetched.

Fetching happens before evaluation: the suite and the CLI call :func:`ensure_dataset` and
:func:`ensure_labels`, then hand the resolved folders to the evaluation, which never downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

from filelock import FileLock

from qaclip_core.pretrained import fetch_hub_file
from qaclip_harness.data.catalog import (
    ORIGIN_FILE,
    DatasetCard,
    DatasetMissingError,
    DatasetOnDisk,
    dataset_dir,
    datasets_dir,
    is_present,
    missing_reason,
)
from qaclip_harness.errors import DatasetError
from qaclip_harness.fetch.archives import fetch_nested, remove_stale_staging, staging_folder
from qaclip_harness.fetch.digests import sha256_of
from qaclip_harness.fetch.urls import fetch_url
from qaclip_harness.fetch.zip_safety import DAMAGED, check_members, extract_all


def _extract_zip(archive: Path, card: DatasetCard, target_parent: Path, origin: dict | None = None) -> None:
    """Unpack ``archive`` so that ``target_parent/<dirname>`` appears atomically."""
    remove_stale_staging(target_parent)
    staging = staging_folder(target_parent, card.dirname)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            check_members(zf, staging, str(archive))
            try:
                bad = zf.testzip()
            except DAMAGED as e:
                raise DatasetError(
                    f"{archive}: damaged ({type(e).__name__}: {e}); delete it and download again"
                ) from None
            if bad:
                raise DatasetError(
                    f"{archive}: member {bad!r} is corrupt (CRC mismatch); delete the archive and download again"
                )
            extract_all(zf, staging, str(archive))
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        final = target_parent / card.dirname
        if final.exists():
            return  # another worker finished first
        if origin is not None:  # travels with the folder's atomic rename: the build can be told later
            (inner / ORIGIN_FILE).write_text(json.dumps(origin, indent=1), encoding="utf-8")
        os.replace(inner, final)
    except DAMAGED as e:  # the directory itself (the members were read above)
        raise DatasetError(f"{archive} is not a valid zip archive ({e}); delete it and download again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_labels(card: DatasetCard, data_root: str | Path, download: bool = False) -> Path:
    """Path of the zero-shot label file, fetched (checksummed) with ``download`` when absent."""
    labels = card.labels or {}
    path = dataset_dir(card, data_root) / labels["filename"]
    if path.is_file() or not download or not labels.get("url"):
        if not path.is_file():
            how = "run with --download" if labels.get("url") else "generate or place it there"
            raise DatasetMissingError(f"{card.display} label file {path} not found; {how}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return fetch_url(labels["url"], path, sha256=labels.get("sha256"))


def ensure_dataset(card: DatasetCard, data_root: str | Path, download: bool = False) -> Path:
    """The dataset's folder, downloading and unpacking it first when allowed and possible."""
    folder = dataset_dir(card, data_root)
    remove_stale_staging(folder.parent)  # what a fetch killed while unpacking left (its process is gone)
    if is_present(card, folder):
        return folder
    hub = card.hub or {}
    if download and card.downloadable and hub.get("member"):
        fetch_nested(card, datasets_dir(data_root), lambda f: is_present(card, f))
        if is_present(card, folder):
            return folder
        raise DatasetError(f"{hub['member']} was unpacked but {missing_reason(card, data_root)}")
    if download and card.downloadable:
        parent = datasets_dir(data_root)
        parent.mkdir(parents=True, exist_ok=True)
        archive = fetch_hub_file(
            hub["repo"],
            hub["filename"],
            repo_type=hub.get("repo_type", "model"),
            local_dir=parent / ".downloads",
            sha256=hub.get("sha256"),
        )
        origin = {
            "archive": f"{hub['repo']}/{hub['filename']}",
            "sha256": sha256_of(Path(archive)),
            "unpacked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with FileLock(str(parent / f".{card.dirname}.lock")):
            if not is_present(card, folder):
                _extract_zip(Path(archive), card, parent, origin)
        if is_present(card, folder):
            return folder
        raise DatasetError(f"{archive} was unpacked but {missing_reason(card, data_root)}")
    raise DatasetMissingError(missing_reason(card, data_root))


def resolve_dataset(card: DatasetCard, data_root: str | Path, download: bool = False) -> DatasetOnDisk:
    """``card``'s folder (and label file), fetched first with ``download``: what the evaluation is then given."""
    folder = ensure_dataset(card, data_root, download=download)
    labels = ensure_labels(card, data_root, download=download) if card.kind == "zeroshot" else None
    return DatasetOnDisk(card, folder, labels)
