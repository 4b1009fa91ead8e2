"""A minimal Hugging Face Hub-compatible file server, for offline runs and tests.

``serve_directory(root)`` serves ``root/<repo_id>/<filename>`` at the URLs that
``huggingface_hub.hf_hub_download`` (2.4.0) requests::

    HEAD/GET {endpoint}/{repo_id}/resolve/{revision}/{filename}            (models)
    HEAD/GET {endpoint}/datasets/{repo_id}/resolve/{revision}/{filename}   (datasets)

Dataset files are looked up in ``root/datasets/<repo_id>/`` first, then in ``root/<repo_id>/``.
Any other path ``/<p>`` serves ``root/<p>``, so plain-URL downloads (``hub.fetch_url``) can be
tested against the same server.

For folder downloads (``HfApi.model_info(files_metadata=True)`` and ``snapshot_download``) it
also answers the two API calls they make, for ``owner/name`` repos::

    GET {endpoint}/api/{models|datasets}/{repo_id}[/revision/{revision}]     repo info with siblings
    GET {endpoint}/api/{models|datasets}/{repo_id}/tree/{revision}[/{path}]  the file list (one page)

Files whose suffix is one the Hub keeps in Git LFS (weights, archives) are listed with their
sha256 as LFS object id, as the Hub lists them.

Point the downloader at it with ``HF_ENDPOINT`` / ``QACLIP_HF_ENDPOINT`` (``qaclip_core.pretrained``
reads both at call time) or ``endpoint=``. Range requests (``Range: bytes=a-b``) are answered with
206 and the slice, as the Hub does; huggingface_hub's ``HfFileSystem`` reads files that way.
Fault injection for tests: ``truncate_after`` (cut the connection after N body bytes),
``corrupt`` (serve wrong bytes under the right ETag), ``corrupt_at`` (flip the one byte at that
offset of the file: a subtle lie), ``claim_size`` (state another size in the listing, the
size headers and Content-Range: a server lying about the size), ``ignore_range`` (answer Range
requests with the whole file, 200) and ``chunk_delay``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/revision/(?P<rev>[^/]+)|/tree/(?P<tree_rev>[^/]+)(?:/(?P<path>.*))?)?$"
)
# suffixes of the Hub's default .gitattributes that a model or dataset repo keeps in LFS
_LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".msgpack",
    ".h5",
    ".onnx",
    ".model",
    ".zip",
    ".tar",
    ".gz",
    ".npy",
    ".npz",
    ".pkl",
)
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass
class Faults:
    """Misbehaviour to inject into GET responses (HEAD always answers truthfully)."""

    truncate_after: int | None = None  # body bytes sent before the connection is cut
    truncate_times: int | None = None  # how many GETs to cut; None: every one
    corrupt: bool = False  # flip bytes but keep the true ETag/length, as a bad mirror would
    ignore_range: bool = False  # answer Range with 200 and the whole file
    corrupt_at: int | None = None  # flip the byte at this offset of the file (the ETag stays the true one)
    claim_size: int | None = None  # the size stated in listings and headers, whatever the file's
    chunk_delay: float = 0.0  # seconds between body chunks, to make downloads overlap
    chunk_size: int = _CHUNK


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    range: str | None
    status: int = 0


@dataclass
class _State:
    root: Path
    faults: Faults = field(default_factory=Faults)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    digests: dict[tuple[str, int, int], str] = field(default_factory=dict)


def _commit_for(repo: str, revision: str) -> str:
    # hf_hub_download insists on a 40-hex X-Repo-Commit; echo real commit ids, make one up for branches.
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_version = "qaclip-local-hub/1"
    # HTTP/1.0 + "Connection: close": no pooled keep-alive connections survive close(), so a stopped
    # server really is unreachable to a client that talked to it before.
    protocol_version = "HTTP/1.0"
    state: _State  # set on the per-server subclass

    def log_message(self, format: str, *args) -> None:  # the base class names it `format`
        pass

    def do_HEAD(self) -> None:  # http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # --- helpers -------------------------------------------------------------------------------

    def _record(self, status: int) -> None:
        with self.state.lock:
            self.state.requests.append(
                Request(self.command, urlsplit(self.path).path, self.headers.get("Range"), status)
            )

    def _locate(self) -> tuple[Path | None, dict[str, str]]:
        """File for the request path (None if absent) and the Hub headers that go with it."""
        path = unquote(urlsplit(self.path).path)
        root = self.state.root
        m = _RESOLVE.match(path)
        if not m:
            return self._inside(root, path.lstrip("/")), {}
        repo, rev, filename = m.group("repo"), m.group("rev"), m.group("file")
        kind = m.group("kind")
        candidates = [f"{kind}/{repo}", repo] if kind else [repo]
        headers = {"X-Repo-Commit": _commit_for(repo, rev)}
        for rel in candidates:
            repo_dir = self._inside(root, rel, want_dir=True)
            if repo_dir is not None:
                file = self._inside(repo_dir, filename)
                if file is None:
                    headers["X-Error-Code"] = "EntryNotFound"
                    headers["X-Error-Message"] = "Entry not found"
                return file, headers
        headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        return None, headers

    @staticmethod
    def _inside(base: Path, rel: str, want_dir: bool = False) -> Path | None:
        p = (base / rel).resolve()
        if p != base.resolve() and base.resolve() not in p.parents:
            return None  # path traversal
        ok = p.is_dir() if want_dir else p.is_file()
        return p if ok else None

    def _digest(self, file: Path) -> str:
        st = file.stat()
        key = (str(file), st.st_size, st.st_mtime_ns)
        with self.state.lock:
            if key in self.state.digests:
                return self.state.digests[key]
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        with self.state.lock:
            self.state.digests[key] = h.hexdigest()
        return h.hexdigest()

    def _error(self, status: int, headers: dict[str, str], head: bool) -> None:
        body = b"" if head else f"{status} {headers.get('X-Error-Message', 'error')}\n".encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)
        self._record(status)

    def _repo_files(self, repo_dir: Path) -> list[dict]:
        """One entry per file of a repo folder (hidden folders such as .cache left out), as the Hub's API lists them."""
        out = []
        for file in sorted(p for p in repo_dir.rglob("*") if p.is_file()):
            rel = file.relative_to(repo_dir)
            if any(part.startswith(".") for part in rel.parts[:-1]):
                continue
            size = file.stat().st_size
            git = hashlib.sha1(f"blob {size}\0".encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    git.update(chunk)
            size = size if self.state.faults.claim_size is None else self.state.faults.claim_size
            entry = {"path": rel.as_posix(), "size": size, "oid": git.hexdigest()}
            if file.suffix in _LFS_SUFFIXES:
                entry["lfs"] = {"oid": self._digest(file), "size": size, "pointerSize": 134}
            out.append(entry)
        return out

    def _api(self, m: re.Match[str], head: bool) -> None:
        """Repo info or tree listing of a repo folder, as JSON."""
        kind, repo = m.group("kind"), m.group("repo")
        root = self.state.root
        rels = [f"datasets/{repo}", repo] if kind == "datasets" else [repo]
        repo_dir = next((d for d in (self._inside(root, r, want_dir=True) for r in rels) if d is not None), None)
        if repo_dir is None:
            self._error(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, head)
            return
        files = self._repo_files(repo_dir)
        rev = m.group("tree_rev") or m.group("rev") or "main"
        if m.group("tree_rev") is not None:
            prefix = (m.group("path") or "").strip("/")
            doc: object = [dict(e, type="file") for e in files if not prefix or e["path"].startswith(prefix + "/")]
        else:
            sibs = [
                {
                    "rfilename": e["path"],
                    "size": e["size"],
                    "blobId": e["oid"],
                    **(
                        {"lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}}
                        if "lfs" in e
                        else {}
                    ),
                }
                for e in files
            ]
            doc = {"id": repo, "modelId": repo, "sha": _commit_for(repo, rev), "private": False, "siblings": sibs}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self._record(200)
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        api = _API.match(unquote(urlsplit(self.path).path))
        if api:
            self._api(api, head)
            return
        file, headers = self._locate()
        if file is None:
            self._error(404, headers, head)
            return
        size = file.stat().st_size
        etag = self._digest(file)
        faults = self.state.faults
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and not head and not faults.ignore_range:
            m = _RANGE.match(rng.strip())
            if not m:
                self._error(416, {"Content-Range": f"bytes */{size}"}, head)
                return
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                self._error(416, {"Content-Range": f"bytes */{size}"}, head)
                return
            status = 206
        length = end - start + 1 if size else 0
        stated = size if faults.claim_size is None else faults.claim_size

        truncate = None
        if not head and faults.truncate_after is not None:
            with self.state.lock:
                if faults.truncate_times is None or faults.truncate_times > 0:
                    truncate = faults.truncate_after
                    if faults.truncate_times is not None:
                        faults.truncate_times -= 1

        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        # The real Hub sends the LFS sha256 as (X-Linked-)ETag; hub.fetch_checkpoint relies on it.
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(stated))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{stated}")
        self.send_header("Connection", "close")
        self.end_headers()
        self._record(status)
        if head:
            return

        sent = 0
        with open(file, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(faults.chunk_size, remaining))
                if not chunk:
                    break
                if faults.corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk)
                at = None if faults.corrupt_at is None else faults.corrupt_at - (start + sent)
                if at is not None and 0 <= at < len(chunk):
                    chunk = chunk[:at] + bytes([chunk[at] ^ 0x01]) + chunk[at + 1 :]
                if truncate is not None and sent + len(chunk) > truncate:
                    chunk = chunk[: max(truncate - sent, 0)]
                    if chunk:
                        self.wfile.write(chunk)
                    self.wfile.flush()
                    self._cut()
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                remaining -= len(chunk)
                if faults.chunk_delay:
                    self.wfile.flush()
                    time.sleep(faults.chunk_delay)

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class LocalHub:
    """A running local hub server; use as a context manager or call :meth:`close`."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None):
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"local hub binds only to the loopback interface, not {host!r}")
        self.root = Path(root).resolve()
        self._state = _State(root=self.root, faults=faults or Faults())
        handler = type("_BoundHandler", (_Handler,), {"state": self._state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="qaclip-local-hub", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def faults(self) -> Faults:
        """The live fault settings (mutable)."""
        return self._state.faults

    def set_faults(self, **kwargs) -> None:
        """Replace the fault settings, e.g. ``set_faults(truncate_after=100, truncate_times=1)``."""
        with self._state.lock:
            self._state.faults = Faults(**kwargs)

    @property
    def requests(self) -> list[Request]:
        """A copy of the requests received so far."""
        with self._state.lock:
            return list(self._state.requests)

    def count(self, method: str | None = None) -> int:
        """Number of requests received (of one method if given)."""
        return sum(1 for r in self.requests if method is None or r.method == method)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._state.lock:
            self._state.requests.clear()

    def url(self, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> str:
        """The resolve URL of a file, as huggingface_hub builds it."""
        prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
        return f"{self.endpoint}/{prefix}{repo_id}/resolve/{revision}/{filename}"

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_directory(root: str | Path, host: str = "127.0.0.1", port: int = 0, **faults) -> LocalHub:
    """Serve ``root/<repo_id>/<filename>`` as a Hugging Face Hub on loopback; ``port=0`` picks a free port."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"local hub root {root} is not a directory")
    return LocalHub(root, host=host, port=port, faults=Faults(**faults))


if __name__ == "__main__":  # pragma: no cover - manual use: python -m qaclip_harness.fetch.local_hub DIR [PORT]
    import sys

    hub = serve_directory(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f"serving {hub.root} at {hub.endpoint}; export HF_ENDPOINT={hub.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.close()
