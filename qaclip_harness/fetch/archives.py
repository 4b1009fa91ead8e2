"""Datasets shipped as a zip inside a larger zip (Chinese-CLIP's ``ELEVATER_all.zip``, one zip per dataset).

``--download`` reads only the inner zip of the dataset asked for: a zip's central directory sits
at its end and the Hub serves byte ranges, so huggingface_hub's file system (``HfFileSystem``)
opens the 37 GB archive for random access, ``zipfile`` reads its directory and the one member,
and the rest never leaves the server. What arrives is verified: the inner zip's CRC-32 as it is
read out of the outer archive, then every member's CRC-32 as it is unpacked (the outer file's
sha256 cannot be checked without all of it). Where the outer archive was already downloaded
whole into ``<datasets>/.downloads/`` (verified against the Hub's sha256 then), it is read from
there. Either way the inner zip's members are checked to stay inside the target, unpacked into
a staging folder beside the target and moved into place with one rename, under a per-dataset
file lock, with a ``.qaclip-origin.json`` saying where the data came from.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import IO, Union

from filelock import FileLock

from qaclip_core.errors import DownloadError, QAClipError
from qaclip_harness.data.catalog import ORIGIN_FILE
from qaclip_harness.errors import DatasetError
from qaclip_harness.fetch.zip_safety import DAMAGED, extract_all
from qaclip_harness.files import remove_stale_temporaries

Outer = Union[Path, IO[bytes]]
RANGE_BLOCK = 8 << 20  # bytes per range request: few requests for a large member, little waste for the directory

DOWNLOADS = ".downloads"
# the staging folder an archive is unpacked into, beside its target: .<dataset folder>.extract-<pid>
STAGING = re.compile(r"^\.(?P<name>.+)\.extract-(?P<pid>\d+)$")


def staging_folder(parent: Path, dirname: str) -> Path:
    """Where this process unpacks ``parent/dirname`` before its one rename."""
    return parent / f".{dirname}.extract-{os.getpid()}"


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging folders in ``parent`` of processes that are gone (a fetch killed with kill -9)."""
    return remove_stale_temporaries(parent, STAGING)


def member_name(card) -> str | None:
    """The inner archive of ``card`` inside its hub file, or ``None`` when the hub file is the dataset itself."""
    hub = getattr(card, "hub", None) or {}
    return hub.get("member")


def _inner_members(names: list[str], wanted: str) -> list[str]:
    return [
        n
        for n in names
        if posixpath.basename(n.rstrip("/")) == wanted and not n.endswith("/") and not n.startswith("__MACOSX/")
    ]


def _copy_member(outer: Outer, wanted: str, dest: Path, label: str = "") -> dict:
    """Copy the inner zip ``wanted`` out of ``outer`` to ``dest`` (zipfile checks its CRC at the end); its record."""
    label = label or str(outer)
    try:
        with zipfile.ZipFile(outer) as zf:
            found = _inner_members(zf.namelist(), wanted)
            if len(found) != 1:
                zips = sorted(posixpath.basename(n) for n in zf.namelist() if n.endswith(".zip"))
                what = "no member" if not found else f"{len(found)} members ({', '.join(found[:4])})"
                raise DatasetError(
                    f"{label}: {what} named {wanted}; it holds {len(zips)} zip files"
                    + (f": {', '.join(zips[:12])}{' ...' if len(zips) > 12 else ''}" if zips else "")
                )
            info = zf.getinfo(found[0])
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            return {"member": info.filename, "member_crc32": f"{info.CRC:08x}", "member_bytes": info.file_size}
    except DAMAGED as e:
        advice = (
            "delete the archive and download again"
            if isinstance(outer, Path)
            else "the server sent other bytes than the archive holds: run again, or download it whole"
        )
        raise DatasetError(f"{label} is not a valid zip archive or {wanted} in it is damaged ({e}); {advice}") from e


def _unpack_checked(archive: Path, target: Path, label: str) -> None:
    """Extract ``archive`` into ``target``, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            extract_all(zf, target, label)
    except DAMAGED as e:
        raise DatasetError(
            f"{label} is not a valid zip archive or is damaged ({e}); delete the outer archive and download again"
        ) from None


def _dataset_root(content: Path, split: str, label: str) -> Path:
    """The shallowest folder of the unpacked content that holds ``<split>/`` (the dataset folder)."""
    if (content / split).is_dir():
        return content
    hits = sorted(
        (p.parent for p in content.rglob(split) if p.is_dir() and "__MACOSX" not in p.parts),
        key=lambda p: (len(p.relative_to(content).parts), str(p)),
    )
    if not hits:
        raise DatasetError(
            f"{label}: no {split}/ folder inside; expected <dataset>/{split}/<class id>/ and label_cn.txt"
        )
    depth = len(hits[0].relative_to(content).parts)
    top = [h for h in hits if len(h.relative_to(content).parts) == depth]
    if len(top) > 1:
        raise DatasetError(
            f"{label}: several folders hold {split}/ ({', '.join(str(t.relative_to(content)) for t in top[:4])})"
        )
    return top[0]


def extract_member(
    outer: Outer,
    wanted: str,
    parent: Path,
    dirname: str,
    split: str = "test",
    label: str = "",
    origin: dict | None = None,
) -> Path:
    """Unpack the inner zip ``wanted`` of ``outer`` (a path or a seekable file) as ``parent/dirname`` (atomically).

    ``origin`` (where ``outer`` came from) is written, with the member's name, CRC-32 and size,
    into the folder as ``.qaclip-origin.json`` before the rename.
    """
    label = label or str(outer)
    final = parent / dirname
    remove_stale_staging(parent)
    staging = staging_folder(parent, dirname)
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "content").mkdir(parents=True)
    try:
        inner = staging / wanted
        member = _copy_member(outer, wanted, inner, label)
        _unpack_checked(inner, staging / "content", f"{label} -> {wanted}")
        root = _dataset_root(staging / "content", split, f"{label} -> {wanted}")
        if origin is not None:
            doc = {**origin, **member, "unpacked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (root / ORIGIN_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        if not final.exists():  # else another process finished first
            os.replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def open_by_ranges(hub: dict, endpoint: str | None = None):
    """The hub file of ``hub`` (repo, filename, repo_type, revision) opened for random access by HTTP range requests."""
    from huggingface_hub import HfFileSystem

    from qaclip_core.pretrained import hub_endpoint, is_offline

    where = f"{hub['repo']}/{hub['filename']}"
    if is_offline():
        raise DownloadError(
            f"{where}: offline (HF_HUB_OFFLINE is set), so the inner zip cannot be read from the Hub; "
            f"place the dataset's folder yourself or download {hub['filename']} whole into .downloads/"
        )
    prefix = {"dataset": "datasets/", "model": "", "space": "spaces/"}[hub.get("repo_type", "model")]
    revision = f"@{hub['revision']}" if hub.get("revision") else ""
    fs = HfFileSystem(endpoint=endpoint or hub_endpoint(), skip_instance_cache=True)
    try:
        remote = fs.open(
            f"{prefix}{hub['repo']}{revision}/{hub['filename']}", "rb", block_size=RANGE_BLOCK, cache_type="readahead"
        )
    except Exception as e:  # huggingface_hub's and the transport's errors: the file could not be reached
        raise DownloadError(f"{where}: cannot open it on the Hub for range requests ({type(e).__name__}: {e})") from e
    _refuse_ignored_ranges(remote, where, hub["filename"])
    return remote


class RangesIgnoredError(QAClipError):
    """The server answered a byte-range request with other bytes (not an OSError: zipfile would call it a bad zip)."""


def _refuse_ignored_ranges(remote, where: str, filename: str) -> None:
    """Make every byte-range read of ``remote`` check that the server sent that range, not more.

    A server that ignores ``Range`` answers 200 with the whole file: read as the range asked for, those
    bytes would be taken for the archive's directory or member and blamed on the archive ("damaged").
    """
    cache = getattr(remote, "cache", None)  # fsspec's block cache reads through its fetcher(start, end)
    fetch = getattr(cache, "fetcher", None)
    if cache is None or fetch is None:
        return

    def checked(start: int, end: int) -> bytes:
        data = fetch(start, end)
        want = max(0, min(end, remote.size) - start)
        if len(data) > want:
            raise RangesIgnoredError(
                f"{where}: the server ignored the byte range it was asked for (bytes {start:,} to {end - 1:,}, "
                f"{want:,} bytes) and sent {len(data):,} bytes (the whole file?): it cannot serve one member of "
                f"the archive; download {filename} whole into .downloads/ instead"
            )
        return data

    cache.fetcher = checked


def fetch_member_by_ranges(card, datasets_folder: Path, endpoint: str | None = None) -> Path:
    """Read only ``card``'s inner zip out of its hub archive with range requests, verify it, unpack it."""
    hub = card.hub
    where = f"{hub['repo']}/{hub['filename']}"
    label = f"{where} (read by byte ranges)"
    origin = {
        "archive": where,
        "fetched": "byte ranges of the hub file; inner CRC-32s checked, the outer sha256 not (it needs the whole file)",
    }
    with open_by_ranges(hub, endpoint) as remote:
        try:
            return extract_member(remote, hub["member"], datasets_folder, card.dirname, card.split, label, origin)
        except (DatasetError, DownloadError):
            raise
        except RangesIgnoredError as e:
            raise DownloadError(str(e)) from None
        except Exception as e:  # a cut connection, a server that lies about the size or the bytes: nothing is kept
            raise DownloadError(
                f"{label}: reading {hub['member']} failed ({type(e).__name__}: {e}); run again to retry, "
                f"or download {hub['filename']} whole"
            ) from e


def fetch_nested(card, datasets_folder: Path, present) -> Path:
    """Fetch ``card``'s inner zip (by ranges, or from a whole outer archive already here) and unpack it.

    ``present(folder)`` says whether the dataset is there.
    """
    from qaclip_core.pretrained import fetch_hub_file

    hub = card.hub
    datasets_folder.mkdir(parents=True, exist_ok=True)
    folder = datasets_folder / card.dirname
    whole = (datasets_folder / DOWNLOADS / hub["filename"]).is_file()
    outer = None
    if whole:  # downloaded whole before: checked against its sha256 (its record), then read locally
        outer = fetch_hub_file(
            hub["repo"],
            hub["filename"],
            repo_type=hub.get("repo_type", "model"),
            local_dir=datasets_folder / DOWNLOADS,
            sha256=hub.get("sha256"),
            manual_url=card.url,
        )
    with FileLock(str(datasets_folder / f".{card.dirname}.lock")):
        if not present(folder):
            if folder.exists():
                raise DatasetError(f"{folder} exists but is incomplete; move it away and run with --download again")
            if outer is None:
                fetch_member_by_ranges(card, datasets_folder)
            else:
                from qaclip_harness.fetch.digests import sha256_of

                origin = {
                    "archive": f"{hub['repo']}/{hub['filename']}",
                    "sha256": sha256_of(Path(outer)),
                    "fetched": "the whole hub file, verified against its sha256",
                }
                extract_member(Path(outer), hub["member"], datasets_folder, card.dirname, card.split, origin=origin)
    return folder
