"""A project's own cards, datasets and expected numbers: the [tool.qaclip] table, options and variables, dataset cards,
and ``qaclip eval`` / ``qaclip record`` on them (the stand-ins of qaclip_harness/fixture/demo.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qaclip_core import registry
from qaclip_harness.data import catalog
from qaclip_harness.errors import DatasetError
from qaclip_harness.project import ProjectError, load_project, register

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated_registries(monkeypatch):
    """Cards and datasets registered by a test vanish after it (both registries are process-wide)."""
    registry.all_cards()
    catalog.all_datasets()
    for name in ("_CARDS", "_ALIASES", "_SOURCES", "_FILES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    for name in ("_CARDS", "_SOURCES", "_FILES"):
        monkeypatch.setattr(catalog, name, dict(getattr(catalog, name)))


def _project(tmp_path: Path, table: str, files: dict[str, str] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'p'\n\n{table}", encoding="utf-8")
    for rel, text in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


CARD = "models:\n  - {name: shop-clip, arch: ViT-fixture@BERT-fixture, checkpoint: ../ckpt/model.pt}\n"
DATASETS = (
    "datasets:\n  - {name: shop-valid, kind: retrieval, path: ../data/Shop, split: valid, split_size: {images: 3}}\n"
    "  - {name: shop-cls, kind: zeroshot, path: ../data/cls, labels: ../data/cls/labels.txt, templates: prompts.yaml}\n"
)


def test_the_table_names_cards_datasets_and_expected_relative_to_it(tmp_path):
    root = _project(
        tmp_path,
        '[tool.qaclip]\ncards = "qaclip/cards"\ndatasets = ["qaclip/datasets.yaml"]\nexpected = "qaclip/expected"\n',
        {"qaclip/cards/cards.yaml": CARD, "qaclip/datasets.yaml": DATASETS, "qaclip/expected/.keep": ""},
    )
    (root / "sub" / "deeper").mkdir(parents=True)
    project = load_project(root / "sub" / "deeper")  # the nearest pyproject.toml above
    assert project.pyproject == root / "pyproject.toml"
    assert project.cards == ((root / "qaclip" / "cards" / "cards.yaml").resolve(),)  # a folder: its *.yaml
    assert project.expected == ((root / "qaclip" / "expected").resolve(),)
    register(project)
    assert registry.get_card("shop-clip").checkpoint == str((root / "qaclip" / "ckpt" / "model.pt").resolve())
    valid, cls = catalog.get_dataset("shop-valid"), catalog.get_dataset("shop-cls")
    assert (valid.location, valid.split, valid.dirname, valid.split_size) == (
        str((root / "data" / "Shop").resolve()),  # relative to the card file: qaclip/../data/Shop
        "valid",
        "Shop",
        {"images": 3},
    )
    assert catalog.dataset_dir(valid, "/elsewhere") == root / "data" / "Shop"
    assert cls.labels == {"filename": str((root / "data" / "cls" / "labels.txt").resolve())}
    assert cls.templates == str((root / "qaclip" / "prompts.yaml").resolve())
    assert catalog.dataset_source("shop-cls") == (root / "qaclip" / "datasets.yaml").resolve()


def test_no_table_adds_nothing(tmp_path):
    _project(tmp_path, "[tool.other]\nx = 1\n")
    assert load_project(tmp_path).empty


def test_options_and_variables_replace_a_key_for_one_run(tmp_path, monkeypatch):
    root = _project(tmp_path, '[tool.qaclip]\ncards = "a.yaml"\n', {"a.yaml": CARD, "b.yaml": CARD, "c.yaml": CARD})
    monkeypatch.setenv("QACLIP_CARDS", f"b.yaml{os.pathsep}c.yaml")
    from qaclip_harness.project import overrides_from_env

    project = load_project(root, overrides_from_env())
    assert project.cards == ((root / "b.yaml").resolve(), (root / "c.yaml").resolve())
    assert project.origin["cards"] == "QACLIP_CARDS"
    with pytest.raises(ProjectError, match=r"--qaclip-cards 'nope.yaml': 'nope.yaml' does not exist"):
        load_project(root, {"cards": ("nope.yaml", "--qaclip-cards")})


@pytest.mark.parametrize(
    "table, files, needle",
    [
        (
            "[tool.qaclip]\ncard = 'a.yaml'\n",
            {},
            "[tool.qaclip] has unknown key(s) 'card' (known: cards, datasets, expected)",
        ),
        ("[tool.qaclip]\ncards = 'missing.yaml'\n", {}, "[tool.qaclip] cards: 'missing.yaml' does not exist"),
        ("[tool.qaclip]\ncards = 3\n", {}, "[tool.qaclip] cards: expected a path or a list of paths"),
        ("[tool.qaclip]\ndatasets = []\n", {}, "[tool.qaclip] datasets: expected a path or a list of paths"),
        (
            "[tool.qaclip]\ncards = 'empty'\n",
            {"empty/readme.txt": "x"},
            "[tool.qaclip] cards: the folder 'empty' holds no *.yaml",
        ),
        ("[tool]\nqaclip = 'x'\n", {}, "tool.qaclip must be a table"),
        ("[tool.qaclip\ncards = 'a'\n", {}, "is not valid TOML"),
    ],
)
def test_a_bad_table_is_one_line_naming_the_file_and_key(tmp_path, table, files, needle):
    root = _project(tmp_path, table, files)
    with pytest.raises(ProjectError) as info:
        load_project(root)
    msg = str(info.value)
    assert needle in msg and str(root / "pyproject.toml") in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "cards, needle",
    [
        (
            "models:\n  - {name: muge-fan, arch: RN50@RBT3-chinese, checkpoint: x.pt, extra: 1}\n",
            "unknown keys ['extra']",
        ),
        ("models:\n  - {name: cn-clip-rn50, arch: RN50@RBT3-chinese, checkpoint: x.pt}\n", "already taken by"),
        ("models: [unclosed\n", "is not valid YAML at line 2"),
    ],
)
def test_a_bad_card_file_names_the_table_that_named_it(tmp_path, cards, needle):
    root = _project(tmp_path, '[tool.qaclip]\ncards = "cards.yaml"\n', {"cards.yaml": cards})
    with pytest.raises(ProjectError) as info:
        register(load_project(root))
    msg = str(info.value)
    assert needle in msg and "cards.yaml" in msg and "[tool.qaclip] cards" in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "body, needle",
    [
        ("datasets:\n  - {name: muge, kind: retrieval, path: d}\n", "dataset 'muge': the name is already taken by"),
        (
            "datasets:\n  - {name: mine, kind: retrieval, path: d, splt: valid}\n",
            "dataset 'mine' has unknown keys ['splt']",
        ),
        ("datasets:\n  - {name: mine, kind: captions, path: d}\n", "dataset 'mine': kind must be retrieval"),
        ("datasets:\n  - {name: mine, kind: zeroshot, path: d}\n", "dataset 'mine': labels must name the label file"),
        (
            "datasets:\n  - {name: mine, kind: retrieval, path: d, labels: l.txt}\n",
            "labels applies to zeroshot datasets only",
        ),
        ("datasets:\n  - {name: mine, kind: retrieval}\n", "dataset 'mine': path must name the dataset's folder"),
        ("datasets:\n  - {name: Mine, kind: retrieval, path: d}\n", "name must be lower-case letters"),
        (
            "datasets:\n  - {name: mine, kind: retrieval, path: d, split_size: {classes: 3}}\n",
            "split_size must map images and texts",
        ),
        ("datasets:\n  - {name: mine, kind: retrieval, path: d, split: a/b}\n", "split must be a folder name"),
        ("datasets:\n  - 3\n", "datasets[0] must be a mapping of keys"),
        ("sets: []\n", "expected one key, datasets: [<dataset card>, ...]"),
        ("datasets: [\n", "is not valid YAML at line 2"),
    ],
)
def test_a_bad_dataset_card_is_one_line_naming_the_file_and_key(tmp_path, body, needle):
    path = tmp_path / "datasets.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        catalog.register_datasets(path)
    msg = str(info.value)
    assert needle in msg and str(path) in msg and "\n" not in msg, msg


def test_project_templates_are_read_and_checked(tmp_path):
    from qaclip_harness.data.prompts import dataset_templates, read_templates

    good = tmp_path / "prompts.yaml"
    good.write_text("- '一张{}的照片'\n- '{}'\n", encoding="utf-8")
    assert read_templates(good) == ["一张{}的照片", "{}"]
    assert dataset_templates("anything", str(good)) == (["一张{}的照片", "{}"], str(good))
    assert dataset_templates("imagenet")[1] == "openai_templates"
    for text, needle in (
        ("- '没有占位'\n", "exactly one {}"),
        ("[]\n", "non-empty list"),
        ("- '{}{}'\n", "exactly one"),
    ):
        good.write_text(text, encoding="utf-8")
        with pytest.raises(DatasetError, match=re.escape(needle)):
            read_templates(good)


# ------------------------------------------------------------------------------------------------
# the qaclip command on a project (subprocesses: the project is read from the working folder)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """The stand-ins of docs/own-models.md: a fine-tuned checkpoint and an LMDB evaluation set, with cards."""
    from qaclip_harness.fixture.demo import write_demo

    root = tmp_path_factory.mktemp("shop")
    write_demo(root)
    _project(
        root,
        '[tool.qaclip]\ncards = "qaclip/cards.yaml"\ndatasets = "qaclip/datasets.yaml"\nexpected = "qaclip/expected"\n',
        {
            "qaclip/cards.yaml": "models:\n  - {name: shop-clip, arch: ViT-fixture@BERT-fixture, "
            "checkpoint: ../checkpoints/epoch_latest.pt}\n",
            "qaclip/datasets.yaml": "datasets:\n  - {name: shop-valid, kind: retrieval, path: ../data/datasets/MyShop, "
            "split: valid, split_size: {images: 120, texts: 387}}\n",
        },
    )
    (root / "qaclip" / "expected").mkdir()
    return root


def _qaclip(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qaclip_harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_eval_takes_the_projects_cards(shop):
    out = _qaclip(
        shop, "eval", "--model", "shop-clip", "--dataset", "shop-valid", "--device", "cpu", "--json", "--quiet"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert (report["num_images"], report["num_texts"], report["split"]) == (120, 387, "valid")
    assert report["split_check"]["ok"] and 10 < report["t2i_r1"] < 90
    listed = _qaclip(shop, "models")
    assert "shop-clip" in listed.stdout.split()


def test_eval_names_a_bad_project_table(shop, tmp_path):
    bad = tmp_path / "bad"
    _project(bad, '[tool.qaclip]\ndatasets = "nope.yaml"\n')
    out = _qaclip(bad, "eval", "--model", "fixture-tiny", "--dataset", "fixture-shapes", "--data-root", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "[tool.qaclip] datasets: 'nope.yaml' does not exist" in out.stderr


def test_record_writes_measured_numbers_with_their_reasons_once(shop):
    args = ["record", "--model", "shop-clip", "--dataset", "shop-valid", "--out", "qaclip/expected", "--device", "cpu"]
    out = _qaclip(shop, *args, "--runs", "fp32,fp32-batch,bf16", "--num-workers", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    path = shop / "qaclip" / "expected" / "shop-valid-shop-clip.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    recorded = doc["models"]["shop-clip"]["recorded"]
    assert doc["recorded"]["runs"]["fp32"] == recorded and doc["recorded"]["batch_sizes"] == {
        "fp32": 64,
        "fp32-batch": 7,
        "bf16": 64,
    }
    # provenance: the checkpoint's digest, the data's fingerprint and counts, the environment
    assert doc["recorded"]["checkpoint"]["sha256"] == registry.get_card("fixture-tiny").sha256
    assert len(doc["recorded"]["data"]["fingerprint"]) == 64 and doc["recorded"]["data"]["counts"] == {
        "images": 120,
        "texts": 387,
    }
    assert doc["recorded"]["environment"]["device"] == "cpu"
    # tolerances: fp32 is the measured batch spread plus one item (no fp16 run asked for: no fp16 tolerance)
    tol = doc["tolerance"]
    assert set(tol) == {"fp32", "bf16"} and set(tol["fp32"]) == {"t2i", "i2t", "mean"}
    spread = max(abs(doc["recorded"]["runs"]["fp32-batch"][k] - v) for k, v in recorded.items() if k.startswith("t2i"))
    assert tol["fp32"]["t2i"]["abs"] == pytest.approx(spread + 100 / 387, abs=2e-6)
    assert "one caption of 387" in tol["fp32"]["t2i"]["why"] and "bf16" in tol["bf16"]["t2i"]["why"]
    bf16 = max(abs(doc["recorded"]["runs"]["bf16"][k] - v) for k, v in recorded.items() if k.startswith("i2t"))
    assert tol["bf16"]["i2t"]["abs"] == pytest.approx(2 * bf16 + tol["fp32"]["i2t"]["abs"], abs=2e-6)
    # recorded once: a second run refuses to overwrite, naming the file and the way to do it
    again = _qaclip(shop, *args, "--runs", "fp32")
    assert again.returncode == 2 and "exists: numbers are recorded once; pass --force" in again.stderr
    assert "shop-valid-shop-clip.yaml" in again.stderr
