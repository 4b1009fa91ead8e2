"""Retrieval data: LMDBs built by cn_clip's own builder read back as cn_clip reads them; bad data fails clearly."""

from __future__ import annotations

import base64
import gc
import json
import pickle
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from qaclip_core.transforms import image_transform
from qaclip_harness.data.retrieval import (
    LmdbImages,
    TextRecord,
    find_dataset_dir,
    load_retrieval_split,
    read_texts,
    write_retrieval_split,
)
from qaclip_harness.errors import DatasetError
from tests.conftest import require_reference
from tests.datasets_util import (
    IMAGE_IDS,
    build_with_reference,
    lmdb_items,
    make_image,
    reference_tr_annotation,
    sample_images,
    sample_texts,
    write_raw_lmdb,
)

RES = 48  # small resolution keeps the reference comparison fast


@pytest.fixture(scope="module")
def ref_dataset(tmp_path_factory):
    """DATAPATH with datasets/Tiny-CN built by cn_clip.preprocess.build_lmdb_dataset."""
    datapath = tmp_path_factory.mktemp("datapath")
    folder = datapath / "datasets" / "Tiny-CN"
    images, texts = sample_images(), sample_texts()
    lmdb_dir = build_with_reference(folder, "test", images, texts)
    return {"datapath": datapath, "folder": folder, "lmdb": lmdb_dir, "images": images, "texts": texts}


def test_ids_and_tensors_equal_cn_clip(ref_dataset):
    require_reference()
    from cn_clip.eval.data import EvalImgDataset

    ref = EvalImgDataset(str(ref_dataset["lmdb"]), resolution=RES)
    ref_items = [ref[i] for i in range(len(ref))]  # the reference walks its cursor: sequential only
    del ref  # py-lmdb allows one open environment per file and process
    gc.collect()
    ours = LmdbImages(ref_dataset["lmdb"], image_transform(RES))
    assert len(ours) == len(ref_items) == len(IMAGE_IDS)
    assert ours.ids == [i for i, _ in ref_items]
    assert ours.ids != sorted(ours.ids)  # byte order, not numeric order
    assert ours.ids == sorted(IMAGE_IDS, key=lambda i: str(i).encode())
    # read by key, in a shuffled order
    order = list(range(len(ours)))
    random.Random(1).shuffle(order)
    for i in order:
        image_id, tensor = ours[i]
        assert image_id == ref_items[i][0]
        assert torch.equal(tensor, ref_items[i][1]), image_id


def test_dataloader_workers_open_their_own_env(ref_dataset):
    ds = LmdbImages(ref_dataset["lmdb"], image_transform(16))
    first = ds[0]  # the parent opens an environment before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    ids, tensors = [], []
    for batch_ids, batch in loader:
        ids += batch_ids.tolist()
        tensors.append(batch)
    assert ids == ds.ids
    assert torch.equal(torch.cat(tensors)[0], first[1])
    assert torch.equal(torch.cat(tensors), torch.stack([ds[i][1] for i in range(len(ds))]))


def test_no_transform_gives_pil(ref_dataset):
    ds = LmdbImages(ref_dataset["lmdb"])
    image_id, image = ds[ds.ids.index(IMAGE_IDS[0])]
    assert image_id == IMAGE_IDS[0] and isinstance(image, Image.Image) and image.size == (32, 32)
    copy = pickle.loads(pickle.dumps(ds))  # spawn-style workers get a picklable dataset
    assert copy.ids == ds.ids and copy[3][1].tobytes() == ds[3][1].tobytes()


@pytest.mark.parametrize("use_datasets_dir", [False, True])
def test_load_split_and_ground_truth_maps(ref_dataset, use_datasets_dir):
    root = ref_dataset["datapath"] / "datasets" if use_datasets_dir else ref_dataset["datapath"]
    split = load_retrieval_split(root, "Tiny-CN", "test", transform=image_transform(16))
    assert split.images.ids == LmdbImages(ref_dataset["lmdb"]).ids
    assert [(t.text_id, t.text, t.image_ids) for t in split.texts] == [
        (t["text_id"], t["text"], t["image_ids"]) for t in ref_dataset["texts"]
    ]
    assert split.text_to_images == {t["text_id"]: t["image_ids"] for t in ref_dataset["texts"]}
    tr = reference_tr_annotation(ref_dataset["folder"] / "test_texts.jsonl")
    assert list(split.image_to_texts.items()) == [(o["image_id"], o["text_ids"]) for o in tr]


def test_write_split_matches_reference_builder(ref_dataset, tmp_path):
    texts = [TextRecord(t["text_id"], t["text"], t["image_ids"]) for t in ref_dataset["texts"]]
    folder = write_retrieval_split(tmp_path, "Tiny-CN", "test", ref_dataset["images"], texts)
    assert folder == tmp_path / "Tiny-CN"
    assert lmdb_items(folder / "lmdb/test/imgs") == lmdb_items(ref_dataset["lmdb"])
    assert read_texts(folder / "test_texts.jsonl") == read_texts(ref_dataset["folder"] / "test_texts.jsonl")
    split = load_retrieval_split(tmp_path, "Tiny-CN", "test")
    assert split.images.ids == LmdbImages(ref_dataset["lmdb"]).ids


# --- malformed data -------------------------------------------------------------------------


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data)


def test_missing_dirs(tmp_path):
    with pytest.raises(DatasetError, match="Nope-CN") as e:
        find_dataset_dir(tmp_path, "Nope-CN")
    assert str(tmp_path / "datasets" / "Nope-CN") in str(e.value) and "build_lmdb_dataset" in str(e.value)
    with pytest.raises(DatasetError, match=r"expected a directory at .*imgs"):
        LmdbImages(tmp_path / "lmdb" / "test" / "imgs")
    (tmp_path / "X").mkdir()
    with pytest.raises(DatasetError, match=r"lmdb/valid/imgs"):
        load_retrieval_split(tmp_path, "X", "valid")


@pytest.mark.parametrize(
    "items, pattern",
    [
        ({b"10": _b64(b"x")}, r"no 'num_images' key \(found 1 image keys\)"),
        ({b"10": _b64(b"x"), b"num_images": b"3"}, "'num_images' says 3 but it holds 1 image keys"),
        ({b"10": _b64(b"x"), b"num_images": b"one"}, "not a decimal count"),
        ({b"10": _b64(b"x"), b"img_7": _b64(b"x"), b"num_images": b"2"}, r"key b'img_7' is not a decimal image id"),
        ({b"7": _b64(b"x"), b"07": _b64(b"x"), b"num_images": b"2"}, "same image id 7"),
    ],
)
def test_bad_lmdb_layout(tmp_path, items, pattern):
    path = write_raw_lmdb(tmp_path / "imgs", items)
    with pytest.raises(DatasetError, match=pattern) as e:
        LmdbImages(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "value, pattern",
    [
        (b"abc", "image id 42 is not valid urlsafe base64"),
        ("é".encode(), "image id 42 is not valid urlsafe base64"),
        (_b64(b"definitely not an image"), "image id 42 cannot be decoded as an image"),
        (_b64(make_image(1, (64, 64))[:300]), "image id 42 cannot be decoded as an image"),  # truncated JPEG
        (_b64(make_image(1, (64, 64), "PNG")[:-40]), "image id 42 cannot be decoded as an image"),  # truncated PNG
    ],
)
def test_bad_image_values(tmp_path, value, pattern):
    path = write_raw_lmdb(tmp_path / "imgs", {b"5": _b64(make_image(5)), b"42": value, b"num_images": b"2"})
    ds = LmdbImages(path, image_transform(16))
    assert ds.ids == [42, 5]
    assert ds[1][0] == 5
    with pytest.raises(DatasetError, match=pattern) as e:
        ds[0]
    assert str(path) in str(e.value)


def _texts_file(tmp_path: Path, lines) -> Path:
    path = tmp_path / "test_texts.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"text_id": 1, "text": "猫", "image_ids": [5]}, ensure_ascii=False)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ('{"text_id": 2, "text": "x", "image_ids": [5]', r":2: invalid JSON"),
        ("[1, 2]", r":2: expected a JSON object"),
        ('{"text_id": 2, "image_ids": [5]}', r":2: missing field 'text'"),
        ('{"text": "x", "image_ids": [5]}', r":2: missing field 'text_id'"),
        ('{"text_id": "2", "text": "x", "image_ids": [5]}', r":2: text_id must be an integer, got '2'"),
        ('{"text_id": true, "text": "x", "image_ids": [5]}', r":2: text_id must be an integer"),
        ('{"text_id": 2, "text": null, "image_ids": [5]}', r":2: text of text_id 2 must be a string"),
        ('{"text_id": 2, "text": "x", "image_ids": []}', r":2: image_ids of text_id 2 must be a non-empty list"),
        ('{"text_id": 2, "text": "x", "image_ids": 5}', r":2: image_ids of text_id 2 must be"),
        ('{"text_id": 2, "text": "x", "image_ids": [5, "6"]}', r":2: image_ids of text_id 2 must be"),
        ('{"text_id": 1, "text": "x", "image_ids": [5]}', r":2: duplicate text_id 1 \(first on line 1\)"),
        # valid JSON, but no UTF-8 can hold a lone surrogate: it used to crash later, in the data fingerprint
        (
            '{"text_id": 2, "text": "a\\ud800b", "image_ids": [5]}',
            r":2: text of text_id 2 holds a lone surrogate \\ud800",
        ),
        (
            '{"text_id": 2, "text": "\\udfff", "image_ids": [5]}',
            r":2: text of text_id 2 holds a lone surrogate \\udfff",
        ),
    ],
)
def test_bad_texts(tmp_path, bad, pattern):
    path = _texts_file(tmp_path, [GOOD, bad])
    with pytest.raises(DatasetError, match=pattern) as e:
        read_texts(path)
    assert str(path) in str(e.value)


def test_texts_empty_missing_and_blank_lines(tmp_path):
    empty = _texts_file(tmp_path, [])
    with pytest.raises(DatasetError, match="empty") as e:
        read_texts(empty)
    assert str(empty) in str(e.value)
    with pytest.raises(DatasetError, match="caption file not found"):
        read_texts(tmp_path / "nope.jsonl")
    # blank lines are skipped; line numbers still count them
    path = _texts_file(tmp_path, [GOOD, "", '{"text_id": 1, "text": "y", "image_ids": [5]}'])
    with pytest.raises(DatasetError, match=r":3: duplicate text_id 1"):
        read_texts(path)


def test_ground_truth_image_missing_from_lmdb(tmp_path):
    texts = [TextRecord(1, "猫", [5]), TextRecord(2, "狗", [5, 77])]
    write_retrieval_split(tmp_path, "T", "test", {5: make_image(5)}, texts)
    with pytest.raises(
        DatasetError, match=r"test_texts.jsonl:2: text_id 2 refers to image id 77, which is not in the image LMDB"
    ):
        load_retrieval_split(tmp_path, "T", "test")


def test_empty_split(tmp_path):
    write_retrieval_split(tmp_path, "T", "test", {}, [TextRecord(1, "猫", [5])])
    with pytest.raises(DatasetError, match="holds no images"):
        load_retrieval_split(tmp_path, "T", "test")


def _big_lmdb(tmp_path: Path) -> Path:
    """An LMDB large enough to have overflow pages far into its data file."""
    images = {i: random.Random(i).randbytes(3000) for i in range(300)}
    texts = [TextRecord(text_id=0, text="x", image_ids=[0])]
    folder = write_retrieval_split(tmp_path, "Big", "test", images, texts)
    return folder / "lmdb" / "test" / "imgs"


_OPEN_IN_CHILD = """
import sys
from qaclip_harness.data.retrieval import LmdbImages
from qaclip_harness.errors import DatasetError
try:
    ds = LmdbImages(sys.argv[1])
    for i in range(len(ds)):
        ds.read_bytes(i)
except DatasetError as e:
    print("DatasetError:", e)
    sys.exit(3)
print("read everything")
"""


@pytest.mark.parametrize("damage", ["truncated-half", "truncated-one-page", "empty", "garbage-page", "no-data-file"])
def test_damaged_lmdb_is_an_error_not_a_crash(tmp_path, damage):
    """A truncated data.mdb used to kill the process with SIGBUS while its keys were scanned.

    Each damage is read in a child process, so a crash shows as a failed test, not a dead run.
    """
    import subprocess
    import sys

    path = _big_lmdb(tmp_path)
    data = path / "data.mdb"
    size = data.stat().st_size
    if damage == "truncated-half":
        with open(data, "r+b") as f:
            f.truncate(size // 2)
    elif damage == "truncated-one-page":
        with open(data, "r+b") as f:
            f.truncate(4096)
    elif damage == "empty":
        data.write_bytes(b"")
    elif damage == "garbage-page":
        with open(data, "r+b") as f:
            f.seek(2 * 4096)
            f.write(random.Random(1).randbytes(4096))
    else:
        data.unlink()
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 3, f"exit {out.returncode}: {out.stdout}{out.stderr[-1500:]}"
    assert str(path) in out.stdout and "extract or rebuild the dataset" in out.stdout
