"""Dataset cards and --download: fetch, check and unpack the Chinese-CLIP eval archives atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from qaclip_core.errors import ChecksumError
from qaclip_harness.data.catalog import DatasetMissingError, get_dataset
from qaclip_harness.data.retrieval import TextRecord, load_retrieval_split, write_retrieval_split
from qaclip_harness.errors import DatasetError
from qaclip_harness.fetch.datasets import ensure_dataset, ensure_labels
from qaclip_harness.fetch.local_hub import serve_directory
from tests.datasets_util import sample_images


def _zip_dataset(tmp: Path, dirname: str) -> Path:
    staging = tmp / "staging"
    images = sample_images([1, 2, 3])
    write_retrieval_split(
        staging, dirname, "test", images, [TextRecord(10, "一只猫", [1]), TextRecord(11, "两只狗", [2, 3])]
    )
    archive = tmp / "hub" / "datasets" / "OFA-Sys" / "chinese-clip-eval" / f"{dirname}.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((staging / dirname).rglob("*")):
            zf.write(path, path.relative_to(staging))
    return archive


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"Flickr30K-CN not found: no folder .*Flickr30k-CN.*--download"):
        ensure_dataset(get_dataset("flickr30k-cn"), tmp_path)


def test_incomplete_dataset_says_which_part_is_missing(tmp_path):
    folder = tmp_path / "Flickr30k-CN"
    (folder / "lmdb" / "test" / "imgs").mkdir(parents=True)
    with pytest.raises(DatasetMissingError, match=r"incomplete: test_texts.jsonl missing") as e:
        ensure_dataset(get_dataset("flickr30k-cn"), tmp_path)
    assert "lmdb" not in str(e.value).split("incomplete:")[1].split(";")[0]
    (folder / "lmdb" / "test" / "imgs").rmdir()
    (folder / "test_texts.jsonl").write_text("{}\n")
    with pytest.raises(DatasetMissingError, match=r"incomplete: lmdb/test/imgs missing"):
        ensure_dataset(get_dataset("flickr30k-cn"), tmp_path)
    with pytest.raises(DatasetMissingError, match=r"no folder .*COCO-CN; run with --download"):
        ensure_dataset(get_dataset("coco-cn"), tmp_path)  # downloadable since Chinese-CLIP published COCO-CN.zip


def test_download_unpacks_into_the_chinese_clip_layout(tmp_path, monkeypatch):
    _zip_dataset(tmp_path, "Flickr30k-CN")
    root = tmp_path / "data"
    with serve_directory(tmp_path / "hub") as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        folder = ensure_dataset(get_dataset("flickr30k-cn"), root, download=True)
        assert hub.count("GET") >= 1
        hub.reset_requests()
        assert ensure_dataset(get_dataset("flickr30k-cn"), root, download=True) == folder
        assert hub.count("GET") == 0  # present: nothing fetched again
    assert folder == root / "datasets" / "Flickr30k-CN"  # a new root gets the ${DATAPATH}/datasets layout
    split = load_retrieval_split(root, "Flickr30k-CN", "test")
    assert sorted(split.images.ids) == [1, 2, 3] and len(split.texts) == 2
    assert not [p for p in (root / "datasets").iterdir() if p.name.startswith(".Flickr30k-CN.extract")]


def test_corrupt_and_hostile_archives_are_refused(tmp_path, monkeypatch):
    archive = _zip_dataset(tmp_path, "MUGE")
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with serve_directory(tmp_path / "hub") as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=r"MUGE.zip.*not a valid zip"):
            ensure_dataset(get_dataset("muge"), tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "MUGE").exists()

    evil = tmp_path / "hub2" / "datasets" / "OFA-Sys" / "chinese-clip-eval" / "MUGE.zip"
    evil.parent.mkdir(parents=True)
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with serve_directory(tmp_path / "hub2") as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match="outside the target folder"):
            ensure_dataset(get_dataset("muge"), tmp_path / "data2", download=True)
    assert not (tmp_path / "escaped.txt").exists()

    # a sibling whose name starts with the staging folder's name is still outside it
    sibling = tmp_path / "hub3" / "datasets" / "OFA-Sys" / "chinese-clip-eval" / "MUGE.zip"
    sibling.parent.mkdir(parents=True)
    with zipfile.ZipFile(sibling, "w") as zf:
        zf.writestr(f"../.MUGE.extract-{os.getpid()}-sibling/x.txt", "x")
    with serve_directory(tmp_path / "hub3") as hub:
        monkeypatch.setenv("QACLIP_HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match="outside the target folder"):
            ensure_dataset(get_dataset("muge"), tmp_path / "data3", download=True)
    assert not list((tmp_path / "data3" / "datasets").glob("*sibling*"))


def test_label_file_download_is_checksummed(tmp_path):
    labels = tmp_path / "served" / "label_cn.txt"
    labels.parent.mkdir()
    labels.write_text("丁鲷\n金鱼\n", encoding="utf-8")
    good = hashlib.sha256(labels.read_bytes()).hexdigest()
    card = get_dataset("imagenet")
    with serve_directory(tmp_path / "served") as hub:
        ok = dataclasses.replace(
            card, labels={"filename": "label_cn.txt", "url": f"{hub.endpoint}/label_cn.txt", "sha256": good}
        )
        path = ensure_labels(ok, tmp_path / "a", download=True)
        assert path.read_text(encoding="utf-8").splitlines() == ["丁鲷", "金鱼"]
        bad = dataclasses.replace(ok, labels=dict(ok.labels, sha256="0" * 64))
        with pytest.raises(ChecksumError, match=r"label_cn.txt"):
            ensure_labels(bad, tmp_path / "b", download=True)
    assert not (tmp_path / "b" / "imagenet" / "label_cn.txt").exists()
    with pytest.raises(DatasetMissingError, match=r"label_cn.txt"):
        ensure_labels(card, tmp_path / "c", download=False)
