"""The QA-CLIP README's inference example runs verbatim with ``import qaclip_core as clip``."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.data import EXAMPLE_IMAGE, SEED_EXAMPLE
from tests.reference_models import reference_model, save_reference_checkpoint


def _example_code() -> str:
    code = SEED_EXAMPLE.read_text(encoding="utf-8")
    # the only change: the package name
    code = code.replace("import clip as clip", "import qaclip_core as clip")
    code = code.replace("from clip import", "from qaclip_core import")
    return code


@pytest.mark.parity
def test_seed_example_runs(tmp_path, monkeypatch, capsys):
    # a local checkpoint in place of the download: QA-CLIP-base.pt in download_root='./'; the card
    # pins the published file's sha256 and size, which a random checkpoint cannot match: lifted here
    from dataclasses import replace

    from qaclip_core import registry

    card = registry.get_card("ViT-B-16")
    monkeypatch.setitem(registry._CARDS, card.name, replace(card, sha256=None, size=None))
    save_reference_checkpoint(reference_model("ViT-B-16@RoBERTa-wwm-ext-base-chinese"), tmp_path / "QA-CLIP-base.pt")
    (tmp_path / "examples").mkdir()
    shutil.copyfile(EXAMPLE_IMAGE, tmp_path / "examples" / "pokemon.jpeg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # proves nothing is fetched
    scope: dict = {}
    exec(compile(_example_code(), str(SEED_EXAMPLE), "exec"), scope)
    out = capsys.readouterr().out
    assert "Available models: ['ViT-B-16', 'ViT-L-14', 'RN50'" in out
    assert "Label probs:" in out
    probs = scope["probs"]
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1.0) < 1e-4
    assert torch.is_tensor(scope["image_features"]) and scope["image_features"].shape == (1, 512)
