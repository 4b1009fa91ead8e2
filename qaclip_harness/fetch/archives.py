"""Datasets shipped as a zip inside a larger zip (Chinese-CLIP's ``ELEVATER_all.zip``, one zip per dataset).

``--download`` fetches the outer archive once through the hub code (resumable, verified against
the Hub's sha256, locked, recorded in the checksum lock file) into ``<datasets>/.downloads/``,
and unpacks only the inner zip of the dataset asked for: the inner zip is copied out (its CRC
checked as it is read), its members checked to stay inside the target, unpacked into a staging
folder beside the target and moved into place with one rename, under a per-dataset file lock.
The outer archive stays, so other datasets of it need no second download.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import zipfile
from pathlib import Path
from typing import List, Optional

from filelock import FileLock

from qaclip_harness.errors import DatasetError
from qaclip_harness.fetch.zip_safety import check_members

DOWNLOADS = ".downloads"


def member_name(card) -> Optional[str]:
    """The inner archive of ``card`` inside its hub file, or ``None`` when the hub file is the dataset itself."""
    hub = getattr(card, "hub", None) or {}
    return hub.get("member")



def _inner_members(names: List[str], wanted: str) -> List[str]:
    return [n for n in names if posixpath.basename(n.rstrip("/")) == wanted and not n.endswith("/")
            and not n.startswith("__MACOSX/")]


def _copy_member(outer: Path, wanted: str, dest: Path) -> None:
    """Copy the inner zip ``wanted`` out of ``outer`` to ``dest`` (zipfile checks its CRC at the end)."""
    try:
        with zipfile.ZipFile(outer) as zf:
            found = _inner_members(zf.namelist(), wanted)
            if len(found) != 1:
                zips = sorted(posixpath.basename(n) for n in zf.namelist() if n.endswith(".zip"))
                what = "no member" if not found else f"{len(found)} members ({', '.join(found[:4])})"
                raise DatasetError(f"{outer}: {what} named {wanted}; it holds {len(zips)} zip files"
                                   + (f": {', '.join(zips[:12])}{' ...' if len(zips) > 12 else ''}" if zips else ""))
            with zf.open(found[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{outer} is not a valid zip archive or {wanted} in it is damaged ({e}); "
                           "delete the archive and download again") from e


def _unpack_checked(archive: Path, target: Path, label: str) -> None:
    """Extract ``archive`` into ``target``, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            check_members(zf, target, label)
            zf.extractall(target)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{label} is not a valid zip archive or is damaged ({e}); delete the outer archive and "
                           "download again") from e


def _dataset_root(content: Path, split: str, label: str) -> Path:
    """The shallowest folder of the unpacked content that holds ``<split>/`` (the dataset folder)."""
    if (content / split).is_dir():
        return content
    hits = sorted((p.parent for p in content.rglob(split) if p.is_dir() and "__MACOSX" not in p.parts),
                  key=lambda p: (len(p.relative_to(content).parts), str(p)))
    if not hits:
        raise DatasetError(f"{label}: no {split}/ folder inside; expected <dataset>/{split}/<class id>/ and label_cn.txt")
    depth = len(hits[0].relative_to(content).parts)
    top = [h for h in hits if len(h.relative_to(content).parts) == depth]
    if len(top) > 1:
        raise DatasetError(f"{label}: several folders hold {split}/ ({', '.join(str(t.relative_to(content)) for t in top[:4])})")
    return top[0]


def extract_member(outer: Path, wanted: str, parent: Path, dirname: str, split: str = "test") -> Path:
    """Unpack the inner zip ``wanted`` of ``outer`` as ``parent/dirname`` (atomically); returns that folder."""
    final = parent / dirname
    staging = parent / f".{dirname}.extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "content").mkdir(parents=True)
    try:
        inner = staging / wanted
        _copy_member(outer, wanted, inner)
        _unpack_checked(inner, staging / "content", f"{outer} -> {wanted}")
        root = _dataset_root(staging / "content", split, f"{outer} -> {wanted}")
        if not final.exists():  # else another process finished first
            os.replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def fetch_nested(card, datasets_folder: Path, present) -> Path:
    """Fetch ``card``'s outer archive (once) and unpack its inner zip; ``present(folder)`` says whether it is there."""
    from qaclip_core.pretrained import fetch_hub_file

    hub = card.hub
    datasets_folder.mkdir(parents=True, exist_ok=True)
    folder = datasets_folder / card.dirname
    outer = fetch_hub_file(hub["repo"], hub["filename"], repo_type=hub.get("repo_type", "model"),
                           local_dir=datasets_folder / DOWNLOADS, sha256=hub.get("sha256"), manual_url=card.url)
    with FileLock(str(datasets_folder / f".{card.dirname}.lock")):
        if not present(folder):
            if folder.exists():
                raise DatasetError(f"{folder} exists but is incomplete; move it away and run with --download again")
            extract_member(Path(outer), hub["member"], datasets_folder, card.dirname, card.split)
    return folder
