"""Downloads through huggingface_hub and plain URLs, against qaclip_harness.fetch.local_hub (no network)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from qaclip_core import pretrained as hub
from qaclip_core.errors import ChecksumError, DownloadError
from qaclip_core.registry import ModelCard
from qaclip_harness.fetch import urls
from qaclip_harness.fetch.local_hub import LocalHub, serve_directory

SIZE = 200_000
REPO, FILE = "org/repo", "m.pt"


def _bytes(seed: int, n: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _card(sha256=None, url=None, size=None) -> ModelCard:
    return ModelCard(
        name="t",
        family="t",
        display="t",
        vision="RN50",
        text="RBT3-chinese",
        resolution=224,
        hub_repo=REPO,
        hub_filename=FILE,
        sha256=sha256,
        url=url,
        size=size,
    )


@dataclass
class Env:
    server: LocalHub
    srv: Path
    root: Path
    cache: Path
    data: bytes
    sha: str
    label: bytes

    def resolve_requests(self, method=None):
        return [r for r in self.server.requests if "/resolve/" in r.path and (method is None or r.method == method)]

    def file_requests(self, name, method="GET"):
        return [r for r in self.server.requests if r.path.endswith(name) and r.method == method]


def _no_sleep_time():
    ns = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    ns["sleep"] = lambda s: None
    return types.SimpleNamespace(**ns)


@pytest.fixture
def env(tmp_path, monkeypatch):
    import huggingface_hub.file_download as hf_download
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub import constants

    srv = tmp_path / "srv"
    (srv / REPO).mkdir(parents=True)
    data = _bytes(0)
    (srv / REPO / FILE).write_bytes(data)
    label = "\n".join(f"类别{i}" for i in range(3000)).encode("utf-8")
    (srv / "files").mkdir()
    (srv / "files" / "label_cn.txt").write_bytes(label)

    server = serve_directory(srv)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    for var in ("QACLIP_HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # for spawned children
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf_home" / "agents.json"))
    # huggingface_hub backs off 1-8 s between retries; the behaviour is the same without the waits
    monkeypatch.setattr(hf_download, "time", _no_sleep_time())
    monkeypatch.setattr(hf_http, "time", _no_sleep_time())
    monkeypatch.setattr(urls, "_RETRY_WAIT", 0.0)
    try:
        yield Env(server, srv, tmp_path / "root", tmp_path / "hf_cache", data, _sha(data), label)
    finally:
        server.close()


def _leftovers(root: Path):
    """Files that would hold (partial or bad) data: everything but locks and bookkeeping."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink())
        and not p.name.endswith((".lock", ".gitignore", "CACHEDIR.TAG"))
        and ".locks" not in p.parts
    )


# ------------------------------------------------------------------------------------------------
# fetch_checkpoint / fetch_hub_file


def test_fresh_download_lands_in_download_root_and_verifies(env):
    path = hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    assert path == env.root / FILE
    assert path.read_bytes() == env.data
    assert [r.method for r in env.resolve_requests()] == ["HEAD", "GET"]
    side = json.loads((env.root / (FILE + ".sha256")).read_text())
    assert side["sha256"] == env.sha and side["size"] == SIZE
    assert not list(env.root.rglob("*.incomplete"))


def test_second_call_does_not_touch_the_network_nor_rehash(env, monkeypatch):
    hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    env.server.reset_requests()

    def no_hashing(path):
        raise AssertionError("re-hashed a file whose digest is cached")

    monkeypatch.setattr(hub, "sha256_file", no_hashing)
    assert hub.fetch_checkpoint(_card(env.sha), download_root=env.root).read_bytes() == env.data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch_checkpoint(_card(env.sha), download_root=env.root) == env.root / FILE
    assert env.server.count() == 0

    # a changed file (new mtime) is hashed again, and a wrong one is reported, not silently used
    monkeypatch.undo()
    (env.root / FILE).write_bytes(env.data[:-1] + b"\0")
    with pytest.raises(ChecksumError, match=FILE):
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)


def test_hf_cache_mode_second_call_offline(env, monkeypatch):
    path = hub.fetch_checkpoint(_card(env.sha))
    assert str(path).startswith(str(env.cache)) and path.read_bytes() == env.data
    env.server.reset_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch_checkpoint(_card(env.sha)) == path
    assert env.server.count() == 0


def test_card_checksum_mismatch_removes_file(env):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        hub.fetch_checkpoint(_card(wrong), download_root=env.root)
    msg = str(info.value)
    assert FILE in msg and wrong in msg and env.sha in msg
    assert _leftovers(env.root) == []
    assert _leftovers(env.cache) == []


def test_lfs_etag_mismatch_without_card_sha(env):
    env.server.set_faults(corrupt=True)  # wrong bytes under the true ETag, like a broken mirror
    with pytest.raises(ChecksumError) as info:
        hub.fetch_checkpoint(_card(None), download_root=env.root)
    msg = str(info.value)
    bad = _sha(bytes(b ^ 0xFF for b in env.data))
    assert FILE in msg and env.sha in msg and bad in msg and "LFS" in msg
    assert _leftovers(env.root) == []

    env.server.set_faults()
    assert hub.fetch_checkpoint(_card(None), download_root=env.root).read_bytes() == env.data


def test_checksum_mismatch_in_hf_cache_leaves_no_blob(env):
    env.server.set_faults(corrupt=True)
    with pytest.raises(ChecksumError, match=FILE):
        hub.fetch_checkpoint(_card(env.sha))
    assert _leftovers(env.cache) == [os.path.join("models--org--repo", "refs", "main")]

    env.server.set_faults()
    assert hub.fetch_checkpoint(_card(env.sha)).read_bytes() == env.data


def test_interrupted_download_resumes(env, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub hands data on in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and resumes from the last
    # whole piece; shrink it so that a small file shows the Range request.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    env.server.set_faults(truncate_after=50_000, truncate_times=1)
    path = hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    assert path.read_bytes() == env.data
    gets = env.resolve_requests("GET")
    assert [r.range for r in gets] == [None, f"bytes={3 * 16384}-"]
    assert [r.status for r in gets] == [200, 206]


def test_interrupted_download_fails_cleanly_then_retry_completes(env):
    env.server.set_faults(truncate_after=0)  # every GET dies before the first byte
    with pytest.raises(DownloadError) as info:
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    assert REPO in str(info.value) and str(env.root / FILE) in str(info.value)
    assert _leftovers(env.root) == []  # no partial file, in place or as .incomplete

    env.server.set_faults()
    assert hub.fetch_checkpoint(_card(env.sha), download_root=env.root).read_bytes() == env.data


def test_offline_mode_says_where_to_put_the_file(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    msg = str(info.value)
    assert REPO in msg and FILE in msg and "offline" in msg
    assert str(env.root / FILE) in msg
    assert f"https://huggingface.co/{REPO}/resolve/main/{FILE}" in msg
    assert env.server.count() == 0

    card = _card(env.sha, url="https://example.org/ckpt/m.pt")
    with pytest.raises(DownloadError, match=r"https://example.org/ckpt/m.pt"):
        hub.fetch_checkpoint(card, download_root=env.root)


def test_unreachable_server(env):
    env.server.close()
    with pytest.raises(DownloadError) as info:
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    msg = str(info.value)
    assert REPO in msg and str(env.root / FILE) in msg and env.server.endpoint in msg
    with pytest.raises(DownloadError, match="download_root"):
        hub.fetch_checkpoint(_card(env.sha))


def test_a_host_that_cannot_be_reached_fails_at_once(env, monkeypatch):
    """No name, refused, no route: one connection attempt decides, not huggingface_hub's 25 s of retries."""
    for var in hub.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    env.server.close()
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"cannot connect to 127.0.0.1") as info:
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    assert time.monotonic() - start < 5 and str(env.root / FILE) in str(info.value)
    assert hub.unreachable("https://qaclip-test.invalid") is not None  # unknown name
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert hub.unreachable("https://qaclip-test.invalid") is None  # behind a proxy the proxy decides


def test_missing_file_and_dataset_repo(env):
    with pytest.raises(DownloadError, match=r"nope.pt"):
        hub.fetch_hub_file(REPO, "nope.pt", local_dir=env.root)

    (env.srv / "OFA-Sys" / "chinese-clip-eval").mkdir(parents=True)
    (env.srv / "OFA-Sys" / "chinese-clip-eval" / "MUGE.zip").write_bytes(b"PK-zip")
    path = hub.fetch_hub_file(
        "OFA-Sys/chinese-clip-eval", "MUGE.zip", repo_type="dataset", local_dir=env.root, sha256=_sha(b"PK-zip")
    )
    assert path.read_bytes() == b"PK-zip"
    assert env.resolve_requests("GET")[-1].path == "/datasets/OFA-Sys/chinese-clip-eval/resolve/main/MUGE.zip"


def test_endpoint_is_read_at_call_time(env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("QACLIP_HF_ENDPOINT", env.server.endpoint)  # takes precedence
    assert hub.fetch_checkpoint(_card(env.sha), download_root=env.root).read_bytes() == env.data


# ------------------------------------------------------------------------------------------------
# fetch_url


def _label_url(env) -> str:
    return f"{env.server.endpoint}/files/label_cn.txt"


def test_fetch_url_fresh_and_cached(env):
    dest = env.root / "label_cn.txt"
    assert urls.fetch_url(_label_url(env), dest, sha256=_sha(env.label), progress=False) == dest
    assert dest.read_bytes() == env.label
    assert not dest.with_name("label_cn.txt.incomplete").exists()
    env.server.reset_requests()
    urls.fetch_url(_label_url(env), dest, sha256=_sha(env.label), progress=False)
    assert env.server.count() == 0


def test_fetch_url_resumes_from_incomplete(env):
    dest = env.root / "label_cn.txt"
    dest.parent.mkdir(parents=True)
    dest.with_name("label_cn.txt.incomplete").write_bytes(env.label[:1000])
    urls.fetch_url(_label_url(env), dest, sha256=_sha(env.label), progress=False)
    assert dest.read_bytes() == env.label
    assert [(r.range, r.status) for r in env.file_requests("label_cn.txt")] == [("bytes=1000-", 206)]


def test_fetch_url_restarts_when_range_is_ignored(env):
    dest = env.root / "label_cn.txt"
    dest.parent.mkdir(parents=True)
    dest.with_name("label_cn.txt.incomplete").write_bytes(b"x" * 1000)  # would corrupt if appended to
    env.server.set_faults(ignore_range=True)
    urls.fetch_url(_label_url(env), dest, sha256=_sha(env.label), progress=False)
    assert dest.read_bytes() == env.label
    assert [r.status for r in env.file_requests("label_cn.txt")] == [200]


def test_fetch_url_cut_connection(env):
    dest = env.root / "label_cn.txt"
    env.server.set_faults(truncate_after=5000, truncate_times=2)
    urls.fetch_url(_label_url(env), dest, sha256=_sha(env.label), progress=False)
    assert dest.read_bytes() == env.label
    assert [r.range for r in env.file_requests("label_cn.txt")] == [None, "bytes=5000-", "bytes=10000-"]

    # no progress at all: give up, keep nothing at dest, and resume later
    dest2 = env.root / "again.txt"
    env.server.set_faults(truncate_after=0)
    with pytest.raises(DownloadError, match=r"again.txt"):
        urls.fetch_url(_label_url(env), dest2, progress=False)
    assert not dest2.exists()


def test_fetch_url_checksum_mismatch(env):
    dest = env.root / "label_cn.txt"
    with pytest.raises(ChecksumError) as info:
        urls.fetch_url(_label_url(env), dest, sha256="f" * 64, progress=False)
    assert "label_cn.txt" in str(info.value) and "f" * 64 in str(info.value) and _sha(env.label) in str(info.value)
    assert not dest.exists() and not dest.with_name("label_cn.txt.incomplete").exists()


def test_fetch_url_offline_and_http_errors(env, monkeypatch):
    dest = env.root / "label_cn.txt"
    with pytest.raises(DownloadError, match="404"):
        urls.fetch_url(f"{env.server.endpoint}/files/nothing.txt", dest, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        urls.fetch_url(_label_url(env), dest, progress=False)
    assert str(dest) in str(info.value) and _label_url(env) in str(info.value)


# ------------------------------------------------------------------------------------------------
# two processes at once


def _fetch_both(barrier, url, label_dest, label_sha, root, ckpt_sha, queue):
    barrier.wait(timeout=60)
    try:
        p1 = urls.fetch_url(url, Path(label_dest), sha256=label_sha, progress=False)
        p2 = hub.fetch_checkpoint(_card(ckpt_sha), download_root=root)
        queue.put((str(p1), hub.sha256_file(p1), str(p2), hub.sha256_file(p2)))
    except BaseException as exc:  # noqa: BLE001 -- report to the parent rather than dying silently
        queue.put(repr(exc))


def test_two_processes_fetch_the_same_files(env):
    env.server.set_faults(chunk_size=8192, chunk_delay=0.02)  # ~0.5 s per file: the fetches overlap
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    label_dest = env.root / "label_cn.txt"
    args = (barrier, _label_url(env), str(label_dest), _sha(env.label), str(env.root), env.sha, queue)
    procs = [ctx.Process(target=_fetch_both, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    expected = (str(label_dest), _sha(env.label), str(env.root / FILE), env.sha)
    assert results == [expected, expected]
    # the second process waited for the first and found the finished files
    assert len(env.file_requests("label_cn.txt")) == 1
    assert len(env.resolve_requests("GET")) == 1
    assert _leftovers(env.root) == sorted(
        [
            "label_cn.txt",
            "label_cn.txt.sha256",
            FILE,
            FILE + ".sha256",
            os.path.join(".cache", "huggingface", "download", FILE + ".metadata"),
        ]
    )


# ------------------------------------------------------------------------------------------------
# orphaned partial downloads, full re-verification, the checksum lock file


_CHILD_FETCH = """
import sys
from qaclip_core import pretrained as hub
hub.fetch_hub_file(sys.argv[1], sys.argv[2], local_dir=sys.argv[3])
"""


def test_partial_left_by_a_killed_download_is_removed(env):
    """kill -9 mid-download leaves huggingface_hub's *.incomplete behind; the next fetch cleans it."""
    import signal
    import subprocess
    import sys

    env.server.set_faults(chunk_size=4096, chunk_delay=0.2)  # about 10 s for the file: time to kill it
    child = subprocess.Popen([sys.executable, "-c", _CHILD_FETCH, REPO, FILE, str(env.root)])
    try:
        deadline = time.time() + 120
        while not list(env.root.rglob("*.incomplete")):
            assert child.poll() is None, "the child finished before it could be killed"
            assert time.time() < deadline, "no partial download appeared"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert list(env.root.rglob("*.incomplete")) and not (env.root / FILE).exists()
    env.server.set_faults()
    assert hub.fetch_hub_file(REPO, FILE, local_dir=env.root).read_bytes() == env.data
    assert not list(env.root.rglob("*.incomplete"))


def test_partial_in_the_hf_cache_is_removed(env):
    first = hub.fetch_hub_file(REPO, FILE)
    blob = Path(os.path.realpath(first))
    orphan = blob.with_name(blob.name + ".0123abcd.incomplete")
    orphan.write_bytes(env.data[:1000])
    os.unlink(first)  # the snapshot link is gone: the next call downloads again
    os.unlink(blob)
    assert hub.fetch_hub_file(REPO, FILE).read_bytes() == env.data
    assert not orphan.exists()


def test_sidecar_is_trusted_until_full_verification_is_asked(env, monkeypatch):
    path = hub.fetch_checkpoint(_card(env.sha), download_root=env.root)
    st = path.stat()
    tampered = bytearray(env.data)
    tampered[1000] ^= 0xFF
    path.write_bytes(bytes(tampered))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, mtime restored: the record still fits
    assert hub.fetch_checkpoint(_card(env.sha), download_root=env.root) == path  # what the README says it cannot see
    monkeypatch.setenv("QACLIP_VERIFY", "1")
    with pytest.raises(ChecksumError, match=f"expected {env.sha}"):
        hub.fetch_checkpoint(_card(env.sha), download_root=env.root)


def test_lock_file_records_then_checks_cached_and_downloaded_files(env, monkeypatch, tmp_path):
    lock = tmp_path / "qaclip.lock.json"
    monkeypatch.setenv("QACLIP_LOCK_FILE", str(lock))
    path = hub.fetch_checkpoint(_card(), download_root=env.root)  # no card sha256: recorded on first sight
    doc = json.loads(lock.read_text())
    key = f"hf://models/{REPO}@main/{FILE}"
    assert doc["files"][key]["sha256"] == env.sha and doc["files"][key]["size"] == SIZE
    label = urls.fetch_url(_label_url(env), tmp_path / "dl" / "label_cn.txt", progress=False)
    assert json.loads(lock.read_text())["files"][_label_url(env)]["sha256"] == _sha(label.read_bytes())

    # the cached copy changes on disk: its new digest is not the recorded one
    path.write_bytes(_bytes(9))
    with pytest.raises(ChecksumError) as e:
        hub.fetch_checkpoint(_card(), download_root=env.root)
    assert env.sha in str(e.value) and _sha(_bytes(9)) in str(e.value) and str(lock) in str(e.value)

    # the file changes upstream: a fresh download is refused against the record and removed
    path.unlink()
    Path(str(path) + ".sha256").unlink()
    (env.srv / REPO / FILE).write_bytes(_bytes(7))
    with pytest.raises(ChecksumError) as e:
        hub.fetch_checkpoint(_card(), download_root=env.root)
    assert env.sha in str(e.value) and _sha(_bytes(7)) in str(e.value) and "lock file" in str(e.value)
    assert not path.exists()


def test_malformed_lock_file_is_named(env, monkeypatch, tmp_path):
    from qaclip_core.lockfile import LockFileError

    lock = tmp_path / "bad.lock.json"
    lock.write_text("{not json")
    monkeypatch.setenv("QACLIP_LOCK_FILE", str(lock))
    with pytest.raises(LockFileError, match=r"bad.lock.json"):
        hub.fetch_checkpoint(_card(), download_root=env.root)


# ------------------------------------------------------------------------------------------------
# pinned sizes: checked before any hashing


def _no_hashing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a file of the wrong size was hashed")

    monkeypatch.setattr(hub, "sha256_file", refuse)
    monkeypatch.setattr(hub, "cached_sha256", refuse)


def test_a_cached_file_of_another_size_is_refused_before_hashing(env, monkeypatch):
    env.root.mkdir(parents=True)
    (env.root / FILE).write_bytes(env.data[:1000])  # an unfinished copy placed by hand
    _no_hashing(monkeypatch)
    with pytest.raises(
        ChecksumError, match=rf"{FILE}: 1,000 bytes, but model {REPO}/{FILE} is {SIZE:,} bytes \(its pinned size\)"
    ):
        hub.fetch_hub_file(REPO, FILE, local_dir=env.root, sha256=env.sha, size=SIZE, endpoint=env.server.endpoint)
    assert (env.root / FILE).exists()  # found on disk: reported, not deleted


def test_a_download_of_another_size_is_removed_before_hashing(env, monkeypatch):
    _no_hashing(monkeypatch)
    with pytest.raises(ChecksumError, match=rf"{SIZE:,} bytes downloaded, {SIZE + 1:,} expected .*was removed"):
        hub.fetch_checkpoint(_card(sha256=env.sha, size=SIZE + 1), download_root=env.root)
    assert _leftovers(env.root) == []


def test_the_right_size_and_digest_pass(env):
    path = hub.fetch_checkpoint(_card(sha256=env.sha, size=SIZE), download_root=env.root)
    assert path.read_bytes() == env.data


def test_the_qa_clip_cards_carry_their_published_pins():
    from qaclip_core.registry import all_cards, get_card

    for name, size in [
        ("qa-clip-rn50", 617_738_279),
        ("qa-clip-vit-b-16", 1_569_891_012),
        ("qa-clip-vit-l-14", 2_443_404_116),
        ("qa-clip-vit-l-14-336", 2_444_715_284),
    ]:
        card = get_card(name)
        assert card.size == size and len(card.sha256) == 64 and "TencentARC/QA-CLIP" in card.checksum_source
    assert all(c.size is None or c.sha256 for c in all_cards())  # a size is never pinned without its digest


def test_a_malformed_pin_is_named(tmp_path):
    from qaclip_core.registry import register_cards

    bad = tmp_path / "cards.yaml"
    bad.write_text(
        "models:\n  - {name: x-pin, family: x, display: x, vision: RN50, text: RBT3-chinese, resolution: 224,\n"
        "     sha256: abc, size: 10}\n",
        encoding="utf-8",
    )
    with pytest.raises(
        ValueError, match=r"cards\.yaml: card 'x-pin': sha256 must be 64 lower-case hex digits, got 'abc'"
    ):
        register_cards(bad)
    bad.write_text(bad.read_text().replace("sha256: abc", "sha256: " + "a" * 64).replace("size: 10", "size: -3"))
    with pytest.raises(ValueError, match=r"size must be a positive number of bytes, got -3"):
        register_cards(bad)
