"""ImageNet zero-shot data: label file, class folders as cn_clip's ImageFolder sees them, prompt templates."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
from torchvision import datasets

from qaclip_core.transforms import image_transform
from qaclip_harness.data.catalog import get_dataset
from qaclip_harness.data.imagenet import LABEL_CN_SHA256, ImageNetFolder, read_labels
from qaclip_harness.data.prompts import IMAGENET_TEMPLATES_FILE as TEMPLATES_FILE
from qaclip_harness.data.prompts import imagenet_templates, prompts
from qaclip_harness.errors import DatasetError
from tests.conftest import require_reference
from tests.data import LABEL_CN
from tests.datasets_util import make_imagenet

CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361"]
LABELS = ["丁鲷", "金鱼", "大白鲨", "虎鲨"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pinned_label_digest():
    """The pinned digest is that of the published file (an attributed copy is in tests/data)."""
    assert _sha(LABEL_CN.read_bytes()) == LABEL_CN_SHA256
    assert get_dataset("imagenet").labels["sha256"] == LABEL_CN_SHA256
    labels = read_labels(LABEL_CN)  # no warning: the file is the pinned one
    assert len(labels) == 1000 and labels[0] == "丁鲷"


@pytest.mark.parametrize(
    "raw", ["丁鲷\n金鱼\n大白鲨 \n", "丁鲷\r\n金鱼\r\n 大白鲨", "a\n\nb\n\n", "\ufeffx\u2028y\nz\n"]
)
def test_labels_read_as_reference(tmp_path, raw):
    path = tmp_path / "label_cn.txt"
    path.write_bytes(raw.encode("utf-8"))
    with open(path, encoding="utf8") as f:  # zeroshot_evaluation.py's reading
        expected = [line.strip() for line in f.readlines()]
    assert read_labels(path, expected_sha256=_sha(raw.encode("utf-8"))) == expected


def test_label_digest_mismatch(tmp_path):
    path = tmp_path / "label_cn.txt"
    path.write_text("猫\n狗\n", encoding="utf-8")
    actual = _sha(path.read_bytes())
    with pytest.warns(UserWarning, match="may not be comparable") as rec:
        assert read_labels(path) == ["猫", "狗"]
    msg = str(rec[0].message)
    assert str(path) in msg and LABEL_CN_SHA256 in msg and actual in msg and "published" in msg
    with pytest.raises(DatasetError, match=actual):
        read_labels(path, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_labels(path, expected_sha256=None)
        read_labels(path, expected_sha256=actual.upper())


def test_labels_bad_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.txt"):
        read_labels(tmp_path / "nope.txt", expected_sha256=None)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DatasetError, match=r"bad.txt is not UTF-8"):
        read_labels(bad, expected_sha256=None)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty.txt is empty"):
        read_labels(empty, expected_sha256=None)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_imagenet(root, CLASSES[::-1])  # created out of order: the folder order must come from sorting
    return root


def test_folder_matches_reference_imagefolder(imagenet_root):
    require_reference()
    from cn_clip.clip.utils import image_transform as ref_transform

    split = imagenet_root / "imagenet" / "test"
    ref = datasets.ImageFolder(str(split), transform=ref_transform(32))  # get_zeroshot_dataset's dataset
    ours = ImageNetFolder(imagenet_root, transform=image_transform(32), num_labels=len(LABELS))
    assert ours.classes == CLASSES == ref.classes
    assert ours.samples == ref.samples and ours.targets == ref.targets
    for i in range(len(ref)):
        (a, ta), (b, tb) = ours[i], ref[i]
        assert ta == tb and torch.equal(a, b)


def test_folder_paths(imagenet_root, tmp_path):
    split = imagenet_root / "imagenet" / "test"
    assert ImageNetFolder(split).folder == split  # a direct path
    assert ImageNetFolder(imagenet_root).folder == split
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "imagenet").symlink_to(imagenet_root / "imagenet")
    assert len(ImageNetFolder(tmp_path).classes) == len(CLASSES)
    with pytest.raises(DatasetError, match="ImageNet folder not found"):
        ImageNetFolder(tmp_path / "missing")


def test_folder_label_count_mismatch(imagenet_root, tmp_path):
    labels = tmp_path / "label_cn.txt"
    labels.write_text("\n".join(LABELS[:3]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"has 4 class folders but there are 3 labels in .*label_cn.txt") as e:
        ImageNetFolder(imagenet_root, labels_path=labels)
    assert str(imagenet_root / "imagenet" / "test") in str(e.value)
    with pytest.raises(DatasetError, match="4 class folders but there are 1000 labels"):
        ImageNetFolder(imagenet_root, num_labels=1000)


def test_folder_bad_images(tmp_path):
    split = make_imagenet(tmp_path, CLASSES[:2], per_class=1)
    bad = split / CLASSES[1] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ImageNetFolder(tmp_path)
    idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DatasetError, match=r"broken.jpg"):
        ds[idx]
    (split / "n09999999").mkdir()  # a class folder without images
    with pytest.raises(DatasetError, match="n09999999"):
        ImageNetFolder(tmp_path)


# --- templates -------------------------------------------------------------------------------


def test_templates_equal_reference():
    require_reference()
    from cn_clip.eval.cvinw_zeroshot_templates import openai_templates

    ours = imagenet_templates()
    assert len(ours) == len(openai_templates) == 183
    assert all(t.count("{}") == 1 for t in ours)
    for name in ["金毛寻回犬", "cat", "“引号”{x}"]:
        assert prompts(name) == [t(name) for t in openai_templates]
        assert [t.format(name) for t in ours] == prompts(name)


def test_templates_asset_provenance():
    doc = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    assert doc["source"]["sha256"] == "ae3324fae56ada29571f1aafb2b42179bc4c67729558b89afebe36df9d795629"
    assert doc["source"]["path"] == "cn_clip/eval/cvinw_zeroshot_templates.py"
    assert doc["license"] == "MIT" and "Chinese-CLIP" in doc["attribution"]
    assert doc["templates"] == imagenet_templates() and doc["count"] == 183
