"""--download for ELEVATER: ELEVATER_all.zip fetched once through the hub code, only the needed inner zips unpacked."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from qaclip_harness.data.catalog import DatasetMissingError, get_dataset
from qaclip_harness.errors import DatasetError
from qaclip_harness.fetch.datasets import ensure_dataset
from qaclip_harness.fetch.local_hub import serve_directory
from tests.datasets_util import elevater_all_zip, make_elevater, zip_folder

HUB_PATH = Path("datasets") / "OFA-Sys" / "chinese-clip-eval" / "ELEVATER_all.zip"
LEFTOVERS = (".*.extract-*", "*.incomplete")


@pytest.fixture
def hub_root(tmp_path) -> Path:
    """A local hub serving a miniature ELEVATER_all.zip with cifar-10 (top folder) and mnist (flat) inside."""
    src = tmp_path / "src"
    cifar = make_elevater(src, "cifar-10", ["飞机", "汽车", "鸟"], per_class=2, index=[5, 4, 3, 2, 1, 0])
    mnist = make_elevater(src, "mnist", [str(i) for i in range(3)], per_class=1)
    archive = tmp_path / "hub" / HUB_PATH
    elevater_all_zip({"cifar-10": cifar}, archive)
    with zipfile.ZipFile(archive, "a") as zf:  # mnist's zip holds the dataset's content without a top folder
        zip_folder(mnist, tmp_path / "mnist.zip", prefix=None)
        zf.write(tmp_path / "mnist.zip", "ELEVATER_all/mnist.zip")
    return tmp_path / "hub"


def _leftovers(root: Path) -> list:
    return [str(p) for pattern in LEFTOVERS for p in root.rglob(pattern)]


def test_without_download_the_skip_says_where_to_get_it_and_where_to_put_it(tmp_path):
    with pytest.raises(DatasetMissingError) as e:
        ensure_dataset(get_dataset("cifar100"), tmp_path)
    msg = str(e.value)
    for needle in (
        "CIFAR-100 not found",
        str(tmp_path / "cifar-100"),
        "--download",
        "ELEVATER_all.zip",
        "37 GB",
        "OFA-Sys/chinese-clip-eval",
        "cifar-100.zip",
        "label_cn.txt",
    ):
        assert needle in msg, msg
    (tmp_path / "cifar-100" / "test").mkdir(parents=True)  # a root without datasets/ is the datasets folder
    with pytest.raises(DatasetMissingError, match=r"incomplete: label_cn\.txt missing"):
        ensure_dataset(get_dataset("cifar100"), tmp_path)


def _range_bytes(hub) -> int:
    """Body bytes the server sent for range requests of the archive (206 answers)."""
    total = 0
    for r in hub.requests:
        if r.status == 206 and r.range:
            first, last = r.range.removeprefix("bytes=").split("-")
            total += int(last) - int(first) + 1
    return total


def test_download_reads_only_the_inner_zip_by_range_requests(hub_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    archive = hub_root / HUB_PATH
    with zipfile.ZipFile(archive) as zf:
        cifar = next(i for i in zf.infolist() if i.filename.endswith("cifar-10.zip"))
        mnist = next(i for i in zf.infolist() if i.filename.endswith("mnist.zip"))
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        folder = ensure_dataset(get_dataset("cifar-10"), root, download=True)
        assert folder == root / "datasets" / "cifar-10"
        assert sorted(p.name for p in (folder / "test").iterdir()) == ["0", "1", "2"]
        assert (folder / "label_cn.txt").read_text(encoding="utf-8").split() == ["飞机", "汽车", "鸟"]
        assert json.loads((folder / "index.json").read_text()) == [5, 4, 3, 2, 1, 0]
        assert not (root / "datasets" / "mnist").exists()  # only the inner zip asked for
        assert not (root / "datasets" / ".downloads").exists()  # the outer archive never came whole
        gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        assert gets and all(r.status == 206 for r in gets)  # every read of the archive was a range
        # the directory and cifar-10.zip, in 8 MiB blocks at most: here less than the archive with mnist.zip
        assert _range_bytes(hub) < archive.stat().st_size + cifar.compress_size
        origin = json.loads((folder / ".qaclip-origin.json").read_text(encoding="utf-8"))
        assert origin["archive"] == "OFA-Sys/chinese-clip-eval/ELEVATER_all.zip"
        assert origin["member_crc32"] == f"{cifar.CRC:08x}" and origin["fetched"].startswith("byte ranges")
        assert mnist.CRC != cifar.CRC

        hub.reset_requests()
        assert ensure_dataset(get_dataset("cifar-10"), root, download=True) == folder and hub.count("GET") == 0
        mnist_folder = ensure_dataset(get_dataset("mnist"), root, download=True)
        assert sorted(p.name for p in (mnist_folder / "test").iterdir()) == ["0", "1", "2"]
    assert not _leftovers(root)


def test_an_archive_downloaded_whole_is_verified_and_read_locally(hub_root, tmp_path, monkeypatch):
    """Where ELEVATER_all.zip was downloaded whole (resumed after a cut, checked against its sha256), it is used."""
    from qaclip_core.pretrained import fetch_hub_file

    lock = tmp_path / "qaclip.lock"
    monkeypatch.setenv("QACLIP_LOCK_FILE", str(lock))
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        hub.set_faults(truncate_after=700, truncate_times=1)  # the first transfer is cut: resumed, then verified
        fetch_hub_file(
            "OFA-Sys/chinese-clip-eval",
            "ELEVATER_all.zip",
            repo_type="dataset",
            local_dir=root / "datasets" / ".downloads",
        )
        recorded = json.loads(lock.read_text())["files"][
            "hf://datasets/OFA-Sys/chinese-clip-eval@main/ELEVATER_all.zip"
        ]
        assert recorded["sha256"] == hashlib.sha256((hub_root / HUB_PATH).read_bytes()).hexdigest()
        hub.reset_requests()
        hub.set_faults()
        folder = ensure_dataset(get_dataset("cifar-10"), root, download=True)
        mnist = ensure_dataset(get_dataset("mnist"), root, download=True)
        assert not [r for r in hub.requests if r.method == "GET"]  # read from the local copy
        assert sorted(p.name for p in (mnist / "test").iterdir()) == ["0", "1", "2"]
        origin = json.loads((folder / ".qaclip-origin.json").read_text(encoding="utf-8"))
        assert origin["sha256"] == recorded["sha256"] and origin["fetched"].startswith("the whole hub file")
        (root / "datasets" / ".downloads" / "ELEVATER_all.zip").write_bytes(b"PK damaged")  # a local copy gone bad
        shutil.rmtree(folder)
        with pytest.raises(Exception, match=r"sha256|checksum|ELEVATER_all.zip"):
            ensure_dataset(get_dataset("cifar-10"), root, download=True)
        assert not folder.exists()
    assert not _leftovers(root)


@pytest.mark.parametrize("fault", ["truncated", "lying size", "lying bytes"])
def test_a_truncated_or_lying_server_leaves_nothing_behind(hub_root, tmp_path, monkeypatch, fault):
    from qaclip_core.errors import DownloadError

    archive = hub_root / HUB_PATH
    with zipfile.ZipFile(archive) as zf:
        cifar = next(i for i in zf.infolist() if i.filename.endswith("cifar-10.zip"))
    faults = {
        "truncated": {"truncate_after": 300},  # every transfer cut after 300 bytes
        "lying size": {"claim_size": archive.stat().st_size - 1000},  # the directory is not where it says
        "lying bytes": {"corrupt_at": cifar.header_offset + 200},
    }[fault]  # one bit inside cifar-10.zip
    root = tmp_path / "data"
    with serve_directory(hub_root, **faults) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises((DatasetError, DownloadError)) as e:
            ensure_dataset(get_dataset("cifar-10"), root, download=True)
    assert "ELEVATER_all.zip" in str(e.value)
    if fault == "lying bytes":
        assert isinstance(e.value, DatasetError) and ("CRC" in str(e.value) or "damaged" in str(e.value))
    assert not (root / "datasets" / "cifar-10").exists() and not _leftovers(root)


def test_archive_without_the_dataset_names_what_it_holds(hub_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(
            DatasetError,
            match=r"ELEVATER_all\.zip \(read by byte ranges\): no member named dtd\.zip; it holds 2 zip files: cifar-10\.zip, mnist\.zip",
        ):
            ensure_dataset(get_dataset("dtd"), root, download=True)
    assert not (root / "datasets" / "dtd").exists() and not _leftovers(root)


def _serve_inner(tmp_path: Path, name: str, members: dict) -> Path:
    """A hub whose ELEVATER_all.zip holds one inner zip ``name`` with ``members`` (path -> bytes)."""
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    archive = tmp_path / "hub" / HUB_PATH
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(inner, name)
    return tmp_path / "hub"


def test_inner_member_escaping_the_target_is_refused(tmp_path, monkeypatch):
    hub_dir = _serve_inner(
        tmp_path, "dtd.zip", {"dtd/label_cn.txt": b"a\n", "dtd/test/0/x.png": b"x", "../../evil.txt": b"owned"}
    )
    root = tmp_path / "data"
    with serve_directory(hub_dir) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"dtd\.zip: member '\.\./\.\./evil\.txt' would extract outside"):
            ensure_dataset(get_dataset("dtd"), root, download=True)
    assert not list(tmp_path.rglob("evil.txt")) and not (root / "datasets" / "dtd").exists() and not _leftovers(root)


def test_damaged_inner_zip_is_an_error_naming_the_archive(tmp_path, monkeypatch):
    hub_dir = _serve_inner(tmp_path, "dtd.zip", {"dtd/label_cn.txt": b"a\n", "dtd/test/0/x.png": b"x" * 4000})
    archive = hub_dir / HUB_PATH
    data = bytearray(archive.read_bytes())
    at = data.index(b"x" * 4000)  # stored, so the inner zip's bytes (and its stored member) sit in the outer file
    data[at + 100] = ord("y")
    archive.write_bytes(bytes(data))
    root = tmp_path / "data"
    with serve_directory(hub_dir) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"ELEVATER_all\.zip.*(damaged|CRC)") as e:
            ensure_dataset(get_dataset("dtd"), root, download=True)
    assert "run again, or download it whole" in str(e.value)
    assert not (root / "datasets" / "dtd").exists() and not _leftovers(root)


def test_inner_zip_without_a_test_folder(tmp_path, monkeypatch):
    hub_dir = _serve_inner(tmp_path, "dtd.zip", {"dtd/label_cn.txt": b"a\n", "dtd/train/0/x.png": b"x"})
    root = tmp_path / "data"
    with serve_directory(hub_dir) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"dtd\.zip: no test/ folder inside"):
            ensure_dataset(get_dataset("dtd"), root, download=True)
    assert not _leftovers(root)


def test_a_server_that_ignores_range_is_named_not_the_archive(hub_root, tmp_path, monkeypatch):
    """A server answering Range with 200 and the whole file: the message says so and blames no archive."""
    from qaclip_core.errors import DownloadError

    root = tmp_path / "data"
    with serve_directory(hub_root, ignore_range=True) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DownloadError, match=r"ignored the byte range") as e:
            ensure_dataset(get_dataset("cifar-10"), root, download=True)
    assert "ELEVATER_all.zip" in str(e.value) and "damaged" not in str(e.value) and "whole" in str(e.value)
    assert not (root / "datasets" / "cifar-10").exists() and not _leftovers(root)


def test_the_staging_folder_of_a_killed_fetch_is_removed_by_the_next_run(hub_root, tmp_path, monkeypatch):
    """A fetch killed with kill -9 while unpacking leaves datasets/.<name>.extract-<pid>/: the next run removes it
    (a staging folder of a process still alive is left alone)."""
    import os
    import subprocess
    import sys

    root = tmp_path / "data"
    datasets = root / "datasets"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = datasets / f".cifar-10.extract-{int(dead.stdout)}"
    (stale / "content" / "cifar-10" / "test").mkdir(parents=True)
    live = datasets / f".mnist.extract-{os.getppid()}"  # this test's parent process: alive
    live.mkdir()
    with pytest.raises(DatasetMissingError):  # the next run, even one that does not download
        ensure_dataset(get_dataset("cifar-10"), root)
    assert not stale.exists() and live.is_dir()
    stale.mkdir()
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        ensure_dataset(get_dataset("cifar-10"), root, download=True)
    assert not stale.exists() and sorted(p.name for p in datasets.iterdir()) == [
        ".cifar-10.lock",
        ".mnist.extract-" + str(os.getppid()),
        "cifar-10",
    ]
