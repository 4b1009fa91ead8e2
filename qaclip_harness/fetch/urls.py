"""Plain-URL downloads (label files, mirrors): atomic, resumable with HTTP range requests, locked, verified.

Hand-written on urllib: huggingface_hub's http_get is internal API bound to the Hub session
(Hub headers, its offline switch) and writes to an open file object, so it cannot resume from a
``.incomplete`` left by an earlier process; ``requests`` is not a dependency of this project.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Union

from filelock import FileLock

from qaclip_core.errors import ChecksumError, DownloadError
from qaclip_core.lockfile import active_lock
from qaclip_core.pretrained import (
    CHUNK,
    check_lock,
    failure_reason,
    fsync_dir,
    is_offline,
    normalize_sha256,
    remove_files,
    sha256_file,
    verify_cached,
    write_record,
)

PathLike = Union[str, Path]
_URL_TIMEOUT = 60.0
_URL_ATTEMPTS = 5
_RETRY_WAIT = 0.5  # seconds, times the number of attempts in a row that brought no data


def fetch_url(url: str, dest: PathLike, *, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically and resumably, under a file lock, and verify it."""
    dest = Path(dest).expanduser()
    expected = normalize_sha256(sha256)
    lock = active_lock()
    if dest.is_file():
        verify_cached(dest, expected, url)
        check_lock(lock, url, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():  # another process finished it while this one waited
            verify_cached(dest, expected, url)
            check_lock(lock, url, dest)
            return dest
        if is_offline():
            raise DownloadError(
                f"could not fetch {url}: offline mode is on (HF_HUB_OFFLINE). "
                f"To install it by hand, download {url} and save it as {dest}."
            )
        part = dest.with_name(dest.name + ".incomplete")
        _download_resumable(url, part, dest, progress)
        actual = sha256_file(part)
        entry = lock.entry(url) if lock is not None else None
        want = expected or (entry["sha256"] if entry else None)
        if want is not None and actual != want:
            remove_files(part)
            origin = "expected" if expected or lock is None else f"recorded in the lock file {lock.path}"
            raise ChecksumError(
                f"{dest.name} from {url}: sha256 mismatch: {origin} {want}, got {actual}; "
                f"the downloaded data was removed and {dest} was not written."
            )
        os.replace(part, dest)
        fsync_dir(dest.parent)
        write_record(dest, actual)
        if lock is not None:
            lock.record(url, actual, dest.stat().st_size)
    return dest


def _download_resumable(url: str, part: Path, dest: Path, progress: bool) -> None:
    """Complete ``part`` from ``url``, resuming from its current size; retries while bytes keep arriving."""
    from tqdm.auto import tqdm

    failures = 0
    restarted = False
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "qaclip-core", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_URL_TIMEOUT)
        except urllib.error.HTTPError as exc:
            if (
                exc.code == 416
                and offset
                and (exc.headers.get("Content-Range", "") if exc.headers else "") == f"bytes */{offset}"
            ):
                return  # already complete: an earlier run died between the last byte and the rename
            if exc.code == 416 and offset and not restarted:
                # Our partial file is not a prefix the server recognises: start over once.
                remove_files(part)
                restarted = True
                continue
            raise DownloadError(
                f"could not fetch {url}: HTTP {exc.code} {exc.reason}. "
                f"To install it by hand, download it and save it as {dest}."
            ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # Unreachable: fail fast (offline runs should not hang); a partial file stays for next time.
            raise DownloadError(
                f"could not fetch {url}: {failure_reason(exc)}. To install it by hand, download it and save it as {dest}."
            ) from exc

        with resp:
            status = getattr(resp, "status", None) or 200
            content_range = resp.headers.get("Content-Range", "")
            if offset and status == 206 and content_range.startswith(f"bytes {offset}-"):
                mode = "ab"
            else:
                # The server ignored Range (200): the body is the whole file, so restart cleanly.
                mode, offset = "wb", 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None and length.isdigit() else None
            got = offset
            error: BaseException | None = None
            with (
                open(part, mode) as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                try:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    error = exc  # keep what arrived: the next attempt resumes from it
                f.flush()
                os.fsync(f.fileno())

        if error is None and (total is None or got == total):
            return
        if got > offset:
            failures = 0  # progress was made, like huggingface_hub's http_get: resume at once
            continue
        failures += 1
        if failures >= _URL_ATTEMPTS:
            why = failure_reason(error) if error is not None else f"connection closed after {got} of {total} bytes"
            raise DownloadError(
                f"could not fetch {url}: {why}. The {got} bytes received are kept in {part}; "
                f"run again to resume, or download it by hand and save it as {dest}."
            ) from error
        time.sleep(_RETRY_WAIT * failures)
