"""The fixture's generated datasets, written once per generator into the cache and reused by later runs.

Generating them is the slowest step of a fixture run (seconds of PIL drawing and encoding), so
the output is kept under ``<cache>/fixture-data/<key>``, keyed by the project's source (the
generator and everything it calls: :func:`qaclip_harness.cache.keys.source_digest`) and the
libraries that encode the images. ``files.json`` beside it lists every file's sha256; a copy
whose files do not match it is one warning naming the file, then generated again. What is used
is still identified by content on every run: the data fingerprint in the report names the build
(``generated-seed-0``), or says it is unknown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from qaclip_harness.cache.keys import library_versions, make_key, source_digest
from qaclip_harness.cache.space import say
from qaclip_harness.files import OutputError, atomic_write_json, remove_stale_temporaries, temp_path, why_not_written


def fixture_data(mode: str, root: Path, scratch: Path) -> Path:
    """A data root holding the fixture datasets: from the cache (mode ``use``/``read-only``), else generated anew.

    ``--no-cache`` generates into ``scratch`` (this run's temporary folder), as a read-only cache
    without the entry does; ``--refresh-cache`` generates and replaces the cached copy.
    """
    if mode == "off":
        return _generate(scratch / "fixture-data")
    key = make_key(
        {
            "what": "fixture data",
            "generator": source_digest(),
            "versions": {k: library_versions()[k] for k in ("Pillow", "numpy")},
            "lmdb": _lmdb_version(),
        }
    )
    final = Path(root) / "fixture-data" / key[:32]
    if final.is_dir() and mode != "refresh":
        damaged = _damaged(final)
        if damaged is None:
            return final
        say(f"fixture data {damaged} does not match {_listing(final).name}; generating the fixture data again")
    if mode == "read-only":
        return _generate(scratch / "fixture-data")
    remove_stale_temporaries(final.parent)  # what a killed run left
    tmp = temp_path(final, folder=True)
    shutil.rmtree(tmp, ignore_errors=True)
    _generate(tmp, final)
    try:
        atomic_write_json(tmp / _LISTING, _file_digests(tmp), indent=1)
    except OutputError:
        return tmp
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():  # refresh: the old copy goes aside first (a reader holding it keeps its files)
        old = temp_path(final.with_name(final.name + "-old"), folder=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another worker put its (identical) copy in place first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


_LISTING = "files.json"


def _listing(folder: Path) -> Path:
    return folder / _LISTING


def _file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but the listing, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != _LISTING and p.name != "lock.mdb"
    }


def _damaged(folder: Path) -> Path | None:
    """The first file of ``folder`` that differs from its listing (or the listing itself), None when all match."""
    try:
        listed = json.loads(_listing(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return _listing(folder)
    found = _file_digests(folder)
    if not isinstance(listed, dict):
        return _listing(folder)
    for name in sorted(set(listed) | set(found)):
        if listed.get(name) != found.get(name):
            return folder / name
    return None


def _generate(root: Path, target: Path | None = None) -> Path:
    """Write the fixture datasets into ``root``; on any failure nothing of it is left, and a full disk (or a file
    size limit) is an OutputError naming the folder (``target``: the cache entry ``root`` is built for)."""
    import lmdb

    from qaclip_harness.fixture.shapes import write_shapes_dataset

    try:
        write_shapes_dataset(root)
    except BaseException as e:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the fixture data into {target or root}: {why_not_written(e)}") from None
        if isinstance(e, lmdb.Error):  # py-lmdb's errors carry LMDB's message, not an errno (EFBIG arrives as EIO)
            raise OutputError(
                f"cannot write the fixture data into {target or root}: {e} (is the disk full, or a file size limit set?)"
            ) from None
        raise
    return root


def _lmdb_version() -> str:
    import lmdb

    return lmdb.__version__
