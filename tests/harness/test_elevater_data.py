"""ELEVATER data: templates by folder name, the class-folder layout and its errors, index.json, the classifier."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.datasets import ImageFolder

from qaclip_core.errors import QAClipError
from qaclip_harness.data import prompts as zt
from qaclip_harness.data.catalog import all_datasets, get_dataset
from qaclip_harness.data.elevater import ElevaterFolder, class_ids, read_index
from qaclip_harness.errors import DatasetError
from tests.conftest import require_reference
from tests.datasets_util import make_elevater

REPO = Path(__file__).resolve().parents[2]
ELEVATER = [c for c in all_datasets() if c.layout == "elevater"]


# --- templates --------------------------------------------------------------------------------


def _reference_rule() -> dict:
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    try:
        from extract_templates import selection_rule
    finally:
        sys.path.pop(0)
    require_reference()
    import cn_clip.eval.cvinw_zeroshot_templates as mod

    return selection_rule(Path(mod.__file__).with_name("zeroshot_evaluation.py"))


def test_every_folder_takes_the_reference_list():
    """For each folder the reference's template_dict names, and for others, the same prompts as its lambdas."""
    require_reference()
    import cn_clip.eval.cvinw_zeroshot_templates as mod

    rule = _reference_rule()
    folders = (
        [f for f in rule if f != "openai"] + [c.dirname for c in ELEVATER] + ["imagenet", "EuroSAT_clip", "eurosat"]
    )
    for folder in folders:
        lambdas = getattr(mod, rule.get(folder, rule["openai"]))
        for name in ["飞机", "“空客”A320", "Boeing 737-800"]:
            assert [t.format(name) for t in zt.templates_for(folder)] == [fn(name) for fn in lambdas], folder


def test_templates_of_the_elevater_cards():
    """Only FGVC-Aircraft and EuroSAT of the ten have lists of their own (by exact folder name)."""
    sets = {c.name: zt.template_set(c.dirname) for c in ELEVATER}
    assert sets.pop("fgvc-aircraft") == "aircraft_templates" and sets.pop("eurosat") == "eurosat_templates"
    assert set(sets.values()) == {"openai_templates"}
    assert len(zt.templates_for("fgvc-aircraft-2013b-variants102")) == 100
    assert zt.template_set("EuroSAT_clip") == "openai_templates"  # the reference compares names exactly
    assert zt.special_folders()["resisc45_clip"] == "eurosat_templates"


def test_templates_asset_is_pinned_and_attributed(tmp_path, monkeypatch):
    doc = json.loads(zt.TEMPLATES_FILE.read_text(encoding="utf-8"))
    assert doc["license"] == "MIT" and "OFA-Sys" in doc["attribution"]
    assert doc["source"]["rule"]["path"] == "cn_clip/eval/zeroshot_evaluation.py"
    doc["lists"]["aircraft_templates"][0] = "{}，飞机的图片"
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(zt, "TEMPLATES_FILE", bad)
    zt._load.cache_clear()
    try:
        with pytest.raises(QAClipError, match=r"t\.json: content sha256 .* tools/extract_templates\.py"):
            zt.templates_for("fgvc-aircraft-2013b-variants102")
    finally:
        zt._load.cache_clear()


# --- layout -----------------------------------------------------------------------------------


def test_class_ids_follow_the_documented_rule():
    assert class_ids(1) == ["0"] and class_ids(10) == [str(i) for i in range(10)]
    assert class_ids(11) == [f"{i:03d}" for i in range(11)] and class_ids(100)[-1] == "099"
    assert class_ids(1000)[-1] == "999" and class_ids(1001)[-1] == "1000"
    for n in (7, 10, 11, 47, 100, 211, 1001):
        assert sorted(class_ids(n)) == class_ids(n)  # sorted folder names are the label order


@pytest.mark.parametrize("n", [4, 12])
def test_folder_reads_like_the_reference_imagefolder(tmp_path, n):
    root = make_elevater(tmp_path, "dtd", [f"类{i}" for i in range(n)], per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no class-count warning without a published count
        ours = ElevaterFolder(root / "test", root / "label_cn.txt", n)
    ref = ImageFolder(str(root / "test"))
    assert ours.samples == ref.samples and ours.targets == ref.targets and ours.classes == class_ids(n)


def _expect_error(root: Path, n: int, *needles: str):
    with pytest.raises(DatasetError) as e:
        ElevaterFolder(root / "test", root / "label_cn.txt", n)
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    return str(e.value)


def test_label_count_differs_from_class_folders(tmp_path):
    root = make_elevater(tmp_path, "mnist", [str(i) for i in range(10)])
    _expect_error(root, 11, str(root / "test"), "10 class folders", "label_cn.txt", "names 11 classes", "000 to 010")


def test_class_folders_that_are_not_the_expected_ids(tmp_path):
    root = make_elevater(tmp_path, "cifar-100", [f"c{i}" for i in range(12)], padded=False)  # 0..11 instead of 000..011
    _expect_error(root, 12, str(root / "test"), "000 to 011", "zero-padded to 3 digits", "unexpected ['0', '1'")
    root = make_elevater(tmp_path / "b", "kitti-distance", ["a", "b", "c"], padded=True)  # 000..002 instead of 0..2
    _expect_error(root, 3, "0 to 2", "plain ids", "missing ['0', '1', '2']")
    root = make_elevater(tmp_path / "c", "mnist", ["a", "b"])
    (root / "test" / "1").rename(root / "test" / ".ipynb_checkpoints")  # a stray folder in place of a class
    _expect_error(root, 2, "unexpected ['.ipynb_checkpoints']", "missing ['1']")


def test_empty_class_folder(tmp_path):
    root = make_elevater(tmp_path, "fer-2013", [f"情绪{i}" for i in range(7)])
    for f in (root / "test" / "3").iterdir():
        f.unlink()
    (root / "test" / "3" / "notes.txt").write_text("not an image")
    _expect_error(root, 7, str(root / "test" / "3"), "holds no image files")


def test_split_folder_missing(tmp_path):
    root = make_elevater(tmp_path, "dtd", ["a", "b"])
    shutil.rmtree(root / "test")
    _expect_error(root, 2, "split folder", str(root / "test"))


def test_published_class_count_warns(tmp_path):
    root = make_elevater(tmp_path, "fgvc-aircraft-2013b-variants102", ["a", "b", "c"])
    with pytest.warns(UserWarning, match=r"FGVC-Aircraft: the label file .*names 3 classes.* measured on 100"):
        ElevaterFolder(root / "test", root / "label_cn.txt", 3, published_classes=100, display="FGVC-Aircraft")


def test_index_json(tmp_path):
    root = make_elevater(tmp_path, "voc-2007-classification", ["a", "b"], index=[3, 2, 1, 0])
    assert read_index(root, 4) == [3, 2, 1, 0]
    assert read_index(tmp_path) is None
    for bad, needle in [
        ("[0, 4]", "sample number 4 is outside 0 to 3"),
        ('{"a": 1}', "JSON list"),
        ("[true, 0]", "JSON list"),
        ("[0, ", "is not valid JSON at line 1"),
        ("[-1]", "sample number -1"),
    ]:
        (root / "index.json").write_text(bad)
        with pytest.raises(DatasetError, match=r"index.json") as e:
            read_index(root, 4)
        assert needle in str(e.value)


# --- evaluation: one classifier per model and dataset, through the packed text path -------------


class _Counting:
    """An encoder wrapper that counts text batches and prompts."""

    def __init__(self, encoder):
        self._e = encoder
        self.text_calls = 0
        self.prompts = 0

    def __getattr__(self, name):
        return getattr(self._e, name)

    def encode_text(self, tokens):
        self.text_calls += 1
        self.prompts += len(tokens)
        return self._e.encode_text(tokens)


def test_classifier_is_computed_once_per_model_and_dataset(tmp_path):
    import qaclip_core
    from qaclip_harness.backends import NativeEncoder
    from qaclip_harness.data.catalog import locate
    from qaclip_harness.eval.runner import evaluate_card
    from qaclip_harness.fixture import ARCH, CHECKPOINT

    make_elevater(
        tmp_path / "datasets", "kitti-distance", ["近处的车", "中等距离的车", "远处的车", "没有车"], per_class=2
    )
    encoder = _Counting(NativeEncoder(qaclip_core.load_checkpoint(CHECKPOINT, ARCH), name="fixture"))
    card = get_dataset("kitti-distance")
    first = evaluate_card(encoder, locate(card, tmp_path), progress=False, text_batch_size=256)
    # 4 classes x 183 prompts in length-sorted batches of 256: 3 calls for all classes, not one per class
    assert (encoder.prompts, encoder.text_calls) == (4 * 183, 3)
    assert first.counts == {"images": 8, "classes": 4, "templates": 183}
    assert first.diagnostics["templates"] == "openai_templates"
    again = evaluate_card(encoder, locate(card, tmp_path), progress=False, text_batch_size=256)
    assert encoder.text_calls == 3  # reused
    assert torch.equal(again.raw["logits"], first.raw["logits"])


def test_cli_writes_zero_shot_predictions_in_the_elevater_format(tmp_path, capsys):
    """--dump-predictions on a zero-shot set: <folder>.json, softmax rows in index.json order; metrics unchanged."""
    from qaclip_harness.cli import main
    from qaclip_harness.fixture import CHECKPOINT

    names = ["圆形", "十字形", "菱形"]
    make_elevater(tmp_path / "datasets", "kitti-distance", names, per_class=2, index=[5, 0, 4, 1, 3, 2])
    base = [
        "eval",
        "--checkpoint",
        str(CHECKPOINT),
        "--dataset",
        "kitti-distance",
        "--data-root",
        str(tmp_path),
        "--device",
        "cpu",
        "--json",
        "--quiet",
    ]
    with pytest.warns(UserWarning, match=r"classes: expected 4, found 3"):
        assert main([*base, "--dump-predictions", str(tmp_path / "out")]) == 0
    with_dump = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (tmp_path / "datasets" / "kitti-distance" / "index.json").unlink()
    with pytest.warns(UserWarning, match=r"classes: expected 4, found 3"):
        assert main([*base, "--dump-predictions", str(tmp_path / "plain")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == with_dump["top1"]
    doc = json.loads((tmp_path / "out" / "kitti-distance.json").read_text(encoding="utf-8"))
    plain = json.loads((tmp_path / "plain" / "kitti-distance.json").read_text(encoding="utf-8"))["predictions"][0]
    rows = doc["predictions"][0]
    assert doc["dataset_name"] == "kitti-distance" and doc["n_shot"] == 0 and doc["num_params"] > 0
    assert rows == [plain[i] for i in [5, 0, 4, 1, 3, 2]]
    assert all(abs(sum(r) - 1) < 1e-5 and len(r) == len(names) for r in rows)


# --- links in class folders -------------------------------------------------------------------


def test_a_directory_link_loop_is_not_followed_and_each_file_counts_once(tmp_path):
    """``loop -> .`` beside the images made torchvision count every image again at each level (132 for 12)."""
    from qaclip_harness.data.imagenet import ImageNetFolder

    root = make_elevater(tmp_path, "kitti", ["近", "中", "远"], per_class=4)
    (root / "test" / "1" / "loop").symlink_to(".", target_is_directory=True)
    (root / "test" / "2" / "again.png").symlink_to(root / "test" / "2" / "2_1.png")  # the same file twice
    with pytest.warns(
        UserWarning, match=r"1 directory link\(s\) not followed .*test/1/loop.*; 1 file\(s\) reached twice"
    ):
        data = ElevaterFolder(root / "test", root / "label_cn.txt", 3)
    assert len(data.samples) == 12 and [t for _, t in data.samples] == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.warns(UserWarning, match="not followed"):
        assert len(ImageNetFolder(root / "test", num_labels=3).samples) == 12


def test_a_class_folder_holding_only_a_link_is_empty(tmp_path):
    root = make_elevater(tmp_path, "kitti", ["近", "中"], per_class=2)
    for f in (root / "test" / "1").iterdir():
        f.unlink()
    (root / "test" / "1" / "elsewhere").symlink_to(root / "test" / "0", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"test/1: class folder holds no image files"):
        ElevaterFolder(root / "test", root / "label_cn.txt", 2)
