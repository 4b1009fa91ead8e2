"""The one download the core needs: a published checkpoint from the Hugging Face Hub, verified.

Every fetched file is verified before it is handed out: against the card's sha256 when there is
one, else against the sha256 the Hub reports for LFS files (and, with a lock file, against its
first recorded digest). A file that fails is removed and :class:`~qaclip_core.errors.ChecksumError`
is raised; a file that cannot be fetched raises :class:`~qaclip_core.errors.DownloadError`
saying where to put it by hand. The hashing helpers here are also what the harness verifies
its data files with.

Environment, read at call time (``huggingface_hub`` itself reads its variables once, at import):

* ``QACLIP_HF_ENDPOINT`` or ``HF_ENDPOINT``: the Hub to download from (a mirror, or a local server);
* ``HF_HUB_OFFLINE=1``: never touch the network; files must already be on disk;
* ``QACLIP_CACHE``: the package's cache folder (:func:`cache_root`);
* ``QACLIP_LOCK_FILE``: a checksum lock file (:mod:`qaclip_core.lockfile`) that records and then checks every file;
* ``QACLIP_VERIFY=1``: hash every cached file in full instead of trusting its ``.sha256`` record.

The ``<file>.sha256`` record beside a verified file saves hashing gigabytes on every load: it is
trusted while the file's size and modification time are unchanged. It protects against a file
that was replaced, truncated or re-downloaded; it does not protect against a deliberate edit that
keeps the size and restores the modification time. ``QACLIP_VERIFY=1`` (the suite's
``--verify``) re-hashes everything.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Union

from filelock import FileLock

from .errors import ChecksumError, DownloadError
from .lockfile import ChecksumLock, active_lock, hub_key
from .registry import ModelCard

PathLike = Union[str, Path]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "on", "yes", "true"}
CHUNK = 1 << 20  # bytes read at a time when hashing or copying
PUBLIC_HUB = "https://huggingface.co"


def cache_root() -> Path:
    """The package's cache folder: ``$QACLIP_CACHE`` or ``~/.cache/qaclip`` (read at call time; empty is unset)."""
    return Path(os.environ.get("QACLIP_CACHE", "").strip() or Path.home() / ".cache" / "qaclip").expanduser()


# --------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    s = sha256.strip().lower()
    if not _SHA256.match(s):
        raise ValueError(f"expected sha256 must be 64 hex digits, got {sha256!r}")
    return s


def record_path(path: Path) -> Path:
    # For HF-cache snapshot links the digest belongs to the blob the link points at.
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".sha256")


def write_record(path: Path, digest: str, st: os.stat_result | None = None) -> None:
    real = Path(os.path.realpath(path))
    side = record_path(path)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        st = st or real.stat()
        tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
        os.replace(tmp, side)
    except OSError:  # read-only directory or full disk: the only cost is hashing again on the next load
        try:
            os.unlink(tmp)
        except OSError:
            pass


def full_verification() -> bool:
    """Whether cached files are re-hashed in full (``QACLIP_VERIFY``, read now)."""
    return os.environ.get("QACLIP_VERIFY", "").strip().lower() in _TRUE


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, reusing ``<file>.sha256`` while size and mtime are unchanged (unless QACLIP_VERIFY)."""
    real = Path(os.path.realpath(path))
    st = real.stat()
    if not full_verification():
        try:
            rec = json.loads(record_path(path).read_text())
            if rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns and _SHA256.match(rec["sha256"]):
                out: str = rec["sha256"]
                return out
        except (OSError, ValueError, KeyError, TypeError):
            pass
    digest = sha256_file(real)
    after = real.stat()
    # Only trust the record if the file did not change while it was being hashed.
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
        write_record(path, digest, st)
    return digest


def check_size(path: Path, size: int | None, source: str) -> None:
    """A file of another size than ``size`` is refused at once, naming both sizes (no need to hash gigabytes)."""
    if size is None:
        return
    actual = Path(os.path.realpath(path)).stat().st_size
    if actual != size:
        raise ChecksumError(
            f"{path}: {actual:,} bytes, but {source} is {size:,} bytes (its pinned size): the file is "
            f"truncated, unfinished or another file. Delete it to download it again."
        )


def verify_cached(path: Path, expected: str | None, source: str, size: int | None = None) -> None:
    # A file found on disk may have been placed by hand, so a mismatch is reported, not deleted.
    check_size(path, size, source)
    if expected is None:
        return
    actual = cached_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 mismatch for {source}: expected {expected}, got {actual}. "
            f"Delete the file to download it again."
        )


def check_lock(lock: ChecksumLock | None, key: str, path: Path) -> None:
    """Check a file on disk against its lock entry, or record it there (first verified sight)."""
    if lock is None:
        return
    from .lockfile import check

    size = Path(os.path.realpath(path)).stat().st_size
    entry = lock.entry(key)
    if entry is not None and entry["size"] != size:  # told apart before hashing
        check_size(path, entry["size"], f"{key} as recorded in the lock file {lock.path}")
    digest = cached_sha256(path)
    if entry is None:
        lock.record(key, digest, size)
    else:
        check(entry, key, digest, size, lock.path, where=str(path))


def remove_files(*paths: Path) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Hugging Face Hub


def verify_file(path: PathLike, sha256: str | None, source: str, sidecar: bool = True) -> None:
    """Check a file on disk against ``sha256`` (if given); a mismatch is a ChecksumError naming both values.

    ``sidecar=False`` hashes the file in full and writes no ``.sha256`` record beside it (for
    files inside the installed package, whose folder may be read-only).
    """
    expected = normalize_sha256(sha256)
    if expected is None:
        return
    if sidecar:
        verify_cached(Path(path), expected, source)
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 mismatch for {source}: expected {expected}, got {actual}")


def is_offline() -> bool:
    # huggingface_hub snapshots HF_HUB_OFFLINE at import; honour a value set later too.
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_endpoint() -> str | None:
    # huggingface_hub bakes HF_ENDPOINT into its URL template at import, so pass the current value explicitly.
    ep = os.environ.get("QACLIP_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT")
    return ep.rstrip("/") if ep else None


def _public_url(repo_id: str, filename: str, repo_type: str, revision: str | None) -> str:
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"{PUBLIC_HUB}/{prefix}{repo_id}/resolve/{revision or 'main'}/{filename}"


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable(endpoint: str, timeout: float = 5.0) -> str | None:
    """Why ``endpoint``'s host cannot be reached at all (unknown name, refused, no route), else None.

    huggingface_hub retries those failures with back-off, about 25 s per file; one connection
    attempt before each download tells a missing network from a slow one (not cached: a mirror
    may come back). A timeout is left to huggingface_hub, and so is everything behind a proxy.
    """
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    parts = urllib.parse.urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return None
    except OSError as e:  # socket.gaierror, ConnectionRefusedError, network unreachable
        return f"cannot connect to {host}:{port} ({type(e).__name__}: {e})"


def _hub_error(
    repo_id: str,
    filename: str,
    repo_type: str,
    revision: str | None,
    local_dir: Path | None,
    manual_url: str | None,
    reason: str,
    endpoint: str | None = None,
) -> DownloadError:
    url = manual_url or _public_url(repo_id, filename, repo_type, revision)
    where = endpoint or hub_endpoint() or PUBLIC_HUB
    if local_dir is not None:
        place = f"download {url} and save it as {local_dir / filename}"
    else:
        place = (
            f"download {url}, save it as <dir>/{filename} and pass download_root=<dir> "
            f"(or point HF_ENDPOINT at a reachable mirror)"
        )
    return DownloadError(
        f"could not fetch {filename!r} from the Hugging Face {repo_type} repo {repo_id!r} "
        f"(revision {revision or 'main'}, endpoint {where}): {reason}. To install it by hand, {place}."
    )


def failure_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    cause = exc.__cause__ or exc.__context__
    detail = f"{type(exc).__name__}: {text[0] if text else ''}"
    if cause is not None and str(cause).strip():
        detail += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
    return detail


def hub_exceptions() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors as hf_errors

    excs: list[type[BaseException]] = [
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        OSError,
    ]
    try:
        import httpx2  # the HTTP client huggingface_hub 2.x uses

        excs.append(httpx2.HTTPError)
    except ImportError:  # pragma: no cover - other huggingface_hub versions
        pass
    return tuple(excs)


def _hub_lfs_sha256(
    repo_id: str, filename: str, repo_type: str, revision: str | None, path: Path, endpoint: str | None = None
) -> str | None:
    """The sha256 the Hub advertises for an LFS file, or None (non-LFS files carry a git sha1 instead)."""
    blob = Path(os.path.realpath(path)).name
    if path.is_symlink() and _SHA256.match(blob):
        return blob  # HF cache blobs are named after the ETag the Hub sent: no second request needed
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        ep = endpoint or hub_endpoint()
        url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=ep)
        etag = get_hf_file_metadata(url, endpoint=ep).etag
    except Exception:  # noqa: BLE001 - the file is already size-checked; this check is best effort
        return None
    etag = (etag or "").lower()
    return etag if _SHA256.match(etag) else None


def _safe_name(filename: str) -> str:
    return filename.replace("/", "%2F").replace("\\", "%5C")


def fetch_hub_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    local_dir: PathLike | None = None,
    sha256: str | None = None,
    cache_dir: PathLike | None = None,
    manual_url: str | None = None,
    endpoint: str | None = None,
    size: int | None = None,
) -> Path:
    """Path of a verified Hub file: reused from ``local_dir`` (or the HF cache) if present, else downloaded.

    ``endpoint`` overrides the hub address for this call only (the fixture's local server);
    ``size`` (bytes), when pinned, is checked before any hashing.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    endpoint = endpoint.rstrip("/") if endpoint else hub_endpoint()
    expected = normalize_sha256(sha256)
    source = f"{repo_type} {repo_id}/{filename}"
    ldir = Path(local_dir).expanduser() if local_dir is not None else None
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)

    def find_existing() -> Path | None:
        # Once fetched and verified a file is final: no HEAD request per load, and offline runs work.
        if ldir is not None:
            target = ldir / filename
            return target if target.is_file() else None
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(cdir), revision=revision, repo_type=repo_type)
        return Path(hit) if isinstance(hit, str) else None

    lock = active_lock()
    key = hub_key(repo_id, filename, repo_type, revision)
    found = find_existing()
    if found is not None:
        verify_cached(found, expected, source, size)
        check_lock(lock, key, found)
        return found

    if ldir is not None:
        lock_path = ldir / ".cache" / "qaclip" / "locks" / f"{_safe_name(filename)}.lock"
    else:
        lock_path = cdir / ".locks" / f"qaclip--{repo_type}--{_safe_name(repo_id)}--{_safe_name(filename)}.lock"
    # Our own lock spans download + verification + removal: huggingface_hub's local_dir mode would
    # otherwise let a second process delete and re-download a file the first one is still checking.
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        found = find_existing()
        if found is not None:
            verify_cached(found, expected, source, size)
            check_lock(lock, key, found)
            return found
        if is_offline():
            raise _hub_error(
                repo_id,
                filename,
                repo_type,
                revision,
                ldir,
                manual_url,
                "offline mode is on (HF_HUB_OFFLINE) and the file is not on disk",
                endpoint,
            )
        why = unreachable(endpoint or PUBLIC_HUB)
        if why:
            raise _hub_error(repo_id, filename, repo_type, revision, ldir, manual_url, why, endpoint)
        try:
            path = Path(
                hf_hub_download(
                    repo_id=repo_id,
                    filename=filename,
                    repo_type=repo_type,
                    revision=revision,
                    local_dir=str(ldir) if ldir is not None else None,
                    cache_dir=str(cdir),
                    endpoint=endpoint,
                )
            )
        except hub_exceptions() as exc:
            raise _hub_error(
                repo_id, filename, repo_type, revision, ldir, manual_url, failure_reason(exc), endpoint
            ) from exc

        got = Path(os.path.realpath(path)).stat().st_size
        if size is not None and got != size:  # refused before hashing
            _discard_hub_file(path, ldir, filename)
            raise ChecksumError(
                f"{filename} from {source}: {got:,} bytes downloaded, {size:,} expected (the model card's "
                f"pinned size); the downloaded file {path} was removed."
            )
        # what the file must be: the card's pin, else the lock file's record, else the Hub's ETag
        entry = lock.entry(key) if lock is not None else None
        want: str | None
        if expected:
            want, origin = expected, "the model card"
        elif entry is not None and lock is not None:
            want, origin = entry["sha256"], f"the lock file {lock.path}, entry {key!r}"
        else:
            want, origin = _hub_lfs_sha256(repo_id, filename, repo_type, revision, path, endpoint), "the Hub's LFS ETag"
        actual = sha256_file(path) if (want is not None or lock is not None) else None
        if want is not None and actual != want:
            _discard_hub_file(path, ldir, filename)
            raise ChecksumError(
                f"{filename} from {source}: sha256 mismatch: expected {want} ({origin}), got {actual}; "
                f"the downloaded file {path} was removed."
            )
        remove_files(*_orphaned_partials(ldir, filename, path))
        if actual is None:
            return path
        write_record(path, actual)
        if lock is not None:
            lock.record(key, actual, Path(os.path.realpath(path)).stat().st_size)
        return path


def _orphaned_partials(local_dir: Path | None, filename: str, path: Path) -> list[Path]:
    """Partial downloads of this file left by killed processes (huggingface_hub never resumes them).

    huggingface_hub writes each download to a process-unique ``*.incomplete`` file and cannot
    resume another process's. A process killed mid-download (``kill -9``, a CI timeout) leaves
    one behind, gigabytes for a checkpoint. Every qaclip download of a file holds that file's
    lock, so once a download has finished under it, any other partial of the same file is an orphan.
    """
    try:
        if local_dir is not None:
            from huggingface_hub._local_folder import get_local_download_paths

            probe = get_local_download_paths(local_dir, filename).incomplete_path("ETAG")
            prefix = probe.name.split(".ETAG.")[0]
            return [
                Path(p)
                for p in glob.glob(os.path.join(glob.escape(str(probe.parent)), f"{glob.escape(prefix)}.*.incomplete"))
            ]
        blob = Path(os.path.realpath(path))  # HF cache: blobs/<etag>.<id>.incomplete beside blobs/<etag>
        return [
            Path(p)
            for p in glob.glob(os.path.join(glob.escape(str(blob.parent)), f"{glob.escape(blob.name)}.*.incomplete"))
        ]
    except Exception:  # noqa: BLE001 - a private layout of huggingface_hub; cleaning is best effort
        return []


def _discard_hub_file(path: Path, local_dir: Path | None, filename: str) -> None:
    real = Path(os.path.realpath(path))
    side = record_path(path)
    # In the HF cache `path` is a snapshot link to a blob: both must go, or the bad blob is reused.
    remove_files(path, real, side)
    if local_dir is not None:
        # huggingface_hub's record of the download; stale once the file is gone
        remove_files(local_dir / ".cache" / "huggingface" / "download" / f"{filename}.metadata")


def fetch_checkpoint(card: ModelCard, download_root: PathLike | None = None, endpoint: str | None = None) -> Path:
    """Local path of the card's verified checkpoint: found in ``download_root`` (or the HF cache), else downloaded from its hub repo."""
    if card.hub_repo:
        return fetch_hub_file(
            card.hub_repo,
            card.filename,
            revision=card.hub_revision,
            local_dir=download_root,
            sha256=card.sha256,
            manual_url=card.url,
            endpoint=endpoint,
            size=card.size,
        )
    root = Path(download_root).expanduser() if download_root is not None else cache_root()
    target = root / card.filename
    if target.is_file():
        verify_cached(target, normalize_sha256(card.sha256), f"model {card.name}", card.size)
        return target
    raise DownloadError(f"model {card.name!r} has no hub repo to fetch from; place the checkpoint at {target}")
