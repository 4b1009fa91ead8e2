"""A damaged transformers-format folder is one CheckpointError naming the folder, the file and what was expected."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from qaclip_core.errors import CheckpointError
from qaclip_core.registry import get_card

pytest.importorskip("transformers", reason="the chineseclip extra (transformers) is not installed")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from qaclip_harness.fixture.hf import write_converted

    root = tmp_path_factory.mktemp("converted")
    write_converted(root)
    return root / get_card("hf-fixture-tiny").hub_repo


@pytest.fixture
def folder(converted, tmp_path) -> Path:
    target = tmp_path / "hf-fixture"
    shutil.copytree(converted, target)
    return target


def _load(folder: Path):
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    return ChineseCLIPEncoder.from_pretrained(folder, device="cpu")


def test_the_pristine_copy_loads(folder):
    assert _load(folder).image_size == get_card("hf-fixture-tiny").resolution


def test_a_config_that_does_not_fit_its_weights(folder):
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(
        CheckpointError,
        match=r"hf-fixture/model\.safetensors does not fit its config\.json.*"
        r"other shapes than .*hf-fixture/config\.json describes",
    ):
        _load(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_safetensors_file(folder, damage):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(5000))
    with pytest.raises(CheckpointError, match=r"hf-fixture/model\.safetensors: not a readable safetensors file"):
        _load(folder)


def test_nan_weights_are_refused_at_load(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    key = next(k for k in sorted(weights) if k.endswith("weight") and weights[k].is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"hf-fixture/model\.safetensors: 1 weight\(s\) hold NaN .*{key}"):
        _load(folder)


class _Code:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def test_pickled_code_in_pytorch_model_bin_is_refused_by_name(folder, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "extra": _Code()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"hf-fixture/pytorch_model\.bin: refused: it holds pickled objects"):
        _load(folder)
    assert not (tmp_path / "PWNED").exists()


# ---- the folder layouts (qaclip_harness/fetch/layouts.yaml) and the backends' shared load path


def test_every_folder_layout_is_read_from_its_file_and_names_files_it_fetches():
    from qaclip_harness.fetch.weights import LAYOUTS

    assert set(LAYOUTS) == {"chineseclip", "altclip", "zhclip"}
    assert LAYOUTS["zhclip"].config_files == LAYOUTS["chineseclip"].config_files  # one BERT file set
    for adapter, layout in LAYOUTS.items():
        assert {"config.json", "preprocessor_config.json"} <= set(layout.config_files), adapter
        assert layout.tokenizer_files and set(layout.tokenizer_files) <= set(layout.config_files), adapter


def test_a_layout_naming_an_unknown_file_set_is_one_line(tmp_path):
    from qaclip_harness.documents import DocumentError
    from qaclip_harness.fetch.weights import LAYOUTS_FILE, load_layouts

    text = LAYOUTS_FILE.read_text(encoding="utf-8").replace("files: xlm-roberta}", "files: xlmr}")
    (tmp_path / "layouts.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(
        DocumentError, match=r"layouts.yaml: layout altclip names the file set 'xlmr'; known: bert, xlm"
    ):
        load_layouts(tmp_path / "layouts.yaml")


@pytest.mark.parametrize("adapter", ["chineseclip", "altclip", "zhclip"])
def test_compile_on_a_transformers_folder_warns_and_runs_eagerly(adapter, monkeypatch):
    import importlib

    module = importlib.import_module(f"qaclip_harness.backends.{adapter}")
    encoder_class = next(v for k, v in vars(module).items() if k.endswith("Encoder") and hasattr(v, "from_pretrained"))
    loaded = object()
    monkeypatch.setattr(encoder_class, "from_pretrained", classmethod(lambda cls, *a, **k: loaded))
    card = get_card("hf-fixture-tiny")
    if adapter == "chineseclip":  # checks the loaded image size against the card's
        loaded = type("Loaded", (), {"image_size": card.resolution})()
        monkeypatch.setattr(encoder_class, "from_pretrained", classmethod(lambda cls, *a, **k: loaded))
    with pytest.warns(UserWarning, match=f"{card.name}: compile applies to qaclip_core models only; running eagerly"):
        assert module.load(card, "unused", compile=True) is loaded
