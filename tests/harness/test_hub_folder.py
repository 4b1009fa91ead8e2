"""Folder fetches (transformers-format models) through the real huggingface_hub calls, against the local hub.

``qaclip_harness.fetch.local_hub`` answers the two API calls a folder fetch makes (repo info with the
files' LFS sha256, and the tree listing) besides the file downloads, so nothing is mocked here.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from qaclip_core.errors import ChecksumError, DownloadError
from qaclip_core.registry import ModelCard
from qaclip_harness.fetch.folders import FolderLayout, fetch_folder
from qaclip_harness.fetch.local_hub import serve_directory

REPO = "org/tiny-chineseclip"
LAYOUT = FolderLayout(
    family="Test",
    config_files=("config.json", "preprocessor_config.json", "vocab.txt", "tokenizer_config.json"),
    tokenizer_files=("vocab.txt",),
    manual_files="config.json, preprocessor_config.json, vocab.txt",
)
FILES = {
    "config.json": b'{"model_type": "chinese_clip"}',
    "preprocessor_config.json": b"{}",
    "vocab.txt": b"[PAD]\n[UNK]\n",
    "tokenizer_config.json": b"{}",
    "model.safetensors": b"safetensors weights " * 100,
    "pytorch_model.bin": b"pickled weights " * 100,
    "clip_cn_vit-b-16.pt": b"the original checkpoint " * 100,  # the OFA-Sys repos hold it beside the folder
    "README.md": b"# model card",
}


def _card() -> ModelCard:
    return ModelCard(
        name="tiny",
        family="test",
        display="Tiny",
        vision="ViT-fixture",
        text="BERT-fixture",
        resolution=64,
        hub_repo=REPO,
        adapter="chineseclip",
    )


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setattr("qaclip_core.pretrained.is_offline", lambda: False)  # even where the runner sets HF_HUB_OFFLINE
    root = tmp_path / "hub"
    (root / REPO).mkdir(parents=True)
    for name, data in FILES.items():
        (root / REPO / name).write_bytes(data)
    return root


def test_local_hub_answers_repo_info_and_tree(served):
    from huggingface_hub import HfApi

    with serve_directory(served) as hub:
        api = HfApi(endpoint=hub.endpoint)
        info = api.model_info(REPO, files_metadata=True)
        sibs = {s.rfilename: s for s in info.siblings}
        assert set(sibs) == set(FILES) and len(info.sha) == 40
        assert sibs["model.safetensors"].lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
        assert sibs["config.json"].lfs is None  # text files are plain git blobs
        tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
        assert set(tree) == set(FILES) and tree["vocab.txt"].size == len(FILES["vocab.txt"])
        with pytest.raises(Exception, match=r"404|not found|Repository"):
            api.model_info("org/absent")


def test_fetch_takes_the_layout_and_one_set_of_weights(served, tmp_path):
    with serve_directory(served) as hub:
        folder = fetch_folder(_card(), LAYOUT, download_root=tmp_path / "ckpt", endpoint=hub.endpoint)
        assert folder == tmp_path / "ckpt" / "tiny-chineseclip"
        got = {p.name for p in folder.iterdir() if p.is_file()}
        assert got == {
            "config.json",
            "preprocessor_config.json",
            "vocab.txt",
            "tokenizer_config.json",
            "model.safetensors",
        }
        assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
        hub.reset_requests()
        # once complete, the folder is final: no request at all
        assert fetch_folder(_card(), LAYOUT, download_root=tmp_path / "ckpt", endpoint=hub.endpoint) == folder
        assert hub.count() == 0


def test_fetch_verifies_the_weights_against_the_hub_sha256(served, tmp_path):
    with serve_directory(served, corrupt=True) as hub:  # right ETag and size, wrong bytes
        with pytest.raises(ChecksumError, match=r"model.safetensors.*sha256 mismatch.*removed"):
            fetch_folder(_card(), LAYOUT, download_root=tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / "tiny-chineseclip" / "model.safetensors").exists()


def test_repo_without_weights(served, tmp_path):
    for name in ("model.safetensors", "pytorch_model.bin"):
        (served / REPO / name).unlink()
    with serve_directory(served) as hub:
        with pytest.raises(DownloadError, match=r"lists no model.safetensors or pytorch_model.bin.*hf download"):
            fetch_folder(_card(), LAYOUT, download_root=tmp_path, endpoint=hub.endpoint)


def test_offline_and_unreachable_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("qaclip_core.pretrained.is_offline", lambda: True)
    with pytest.raises(DownloadError) as info:
        fetch_folder(_card(), LAYOUT, download_root=tmp_path)
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and str(tmp_path / "tiny-chineseclip") in msg and f"hf download {REPO}" in msg
    monkeypatch.setattr("qaclip_core.pretrained.is_offline", lambda: False)
    with pytest.raises(DownloadError, match=r"127.0.0.1:9.*To install it by hand"):
        fetch_folder(_card(), LAYOUT, download_root=tmp_path, endpoint="http://127.0.0.1:9")  # discard port: refused


def test_sharded_weights_count_only_when_every_shard_is_there(tmp_path):
    from qaclip_harness.fetch.folders import weights_present

    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"1")
    assert not weights_present(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert weights_present(tmp_path)
