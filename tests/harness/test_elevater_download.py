"""--download for ELEVATER: ELEVATER_all.zip fetched once through the hub code, only the needed inner zips unpacked."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from qaclip_harness.data.catalog import DatasetMissingError, get_dataset
from qaclip_harness.fetch.datasets import ensure_dataset
from qaclip_harness.errors import DatasetError
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
    for needle in ("CIFAR-100 not found", str(tmp_path / "cifar-100"), "--download", "ELEVATER_all.zip",
                   "37 GB", "OFA-Sys/chinese-clip-eval", "cifar-100.zip", "label_cn.txt"):
        assert needle in msg, msg
    (tmp_path / "cifar-100" / "test").mkdir(parents=True)  # a root without datasets/ is the datasets folder
    with pytest.raises(DatasetMissingError, match=r"incomplete: label_cn\.txt missing"):
        ensure_dataset(get_dataset("cifar100"), tmp_path)


def test_download_fetches_once_and_unpacks_only_what_is_needed(hub_root, tmp_path, monkeypatch):
    lock = tmp_path / "qaclip.lock"
    monkeypatch.setenv("QACLIP_LOCK_FILE", str(lock))
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        hub.set_faults(truncate_after=700, truncate_times=1)  # the first transfer is cut: resumed, then verified
        folder = ensure_dataset(get_dataset("cifar-10"), root, download=True)
        assert folder == root / "datasets" / "cifar-10"
        assert sorted(p.name for p in (folder / "test").iterdir()) == ["0", "1", "2"]
        assert (folder / "label_cn.txt").read_text(encoding="utf-8").split() == ["飞机", "汽车", "鸟"]
        assert json.loads((folder / "index.json").read_text()) == [5, 4, 3, 2, 1, 0]
        assert not (root / "datasets" / "mnist").exists()  # only the inner zip asked for
        assert (root / "datasets" / ".downloads" / "ELEVATER_all.zip").is_file()
        fetched = hub.count("GET")
        assert fetched >= 2  # the cut transfer and its resumption
        recorded = json.loads(lock.read_text())["files"]["hf://datasets/OFA-Sys/chinese-clip-eval@main/ELEVATER_all.zip"]
        assert recorded["sha256"] == hashlib.sha256((hub_root / HUB_PATH).read_bytes()).hexdigest()

        hub.reset_requests()
        hub.set_faults(truncate_after=None)
        mnist = ensure_dataset(get_dataset("mnist"), root, download=True)  # the same archive: no second download
        assert hub.count("GET") == 0
        assert sorted(p.name for p in (mnist / "test").iterdir()) == ["0", "1", "2"]
        assert ensure_dataset(get_dataset("cifar-10"), root, download=True) == folder and hub.count("GET") == 0
    assert not _leftovers(root)


def test_archive_without_the_dataset_names_what_it_holds(hub_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with serve_directory(hub_root) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"ELEVATER_all\.zip: no member named dtd\.zip; it holds 2 zip files: cifar-10\.zip, mnist\.zip"):
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
    hub_dir = _serve_inner(tmp_path, "dtd.zip", {"dtd/label_cn.txt": b"a\n", "dtd/test/0/x.png": b"x",
                                                   "../../evil.txt": b"owned"})
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
    assert "download again" in str(e.value)
    assert not (root / "datasets" / "dtd").exists() and not _leftovers(root)


def test_inner_zip_without_a_test_folder(tmp_path, monkeypatch):
    hub_dir = _serve_inner(tmp_path, "dtd.zip", {"dtd/label_cn.txt": b"a\n", "dtd/train/0/x.png": b"x"})
    root = tmp_path / "data"
    with serve_directory(hub_dir) as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"dtd\.zip: no test/ folder inside"):
            ensure_dataset(get_dataset("dtd"), root, download=True)
    assert not _leftovers(root)
