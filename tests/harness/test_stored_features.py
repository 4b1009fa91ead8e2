"""The reference's stored probe features (expected/reference-features/): read only when intact, compared as parity compares."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from qaclip_core.registry import get_card
from qaclip_harness.fixture import MODELS
from qaclip_harness.gates.features import ProbeFeatures
from qaclip_harness.gates.stored import (
    FOLDER,
    StoredFeaturesError,
    compare_stored,
    cpu_supports,
    load_stored,
    loader_image_features,
    read_manifest,
)
from qaclip_harness.gates.tolerances import precision_tolerance
from qaclip_harness.probe import load_probe_set

REPO = Path(__file__).resolve().parents[2]
STORED = REPO / "expected" / FOLDER


@pytest.fixture(scope="module")
def probe():
    return load_probe_set()


def test_every_fixture_model_has_every_precision_stored(probe):
    doc = read_manifest(STORED)
    assert doc["probe_digest"] == probe.digest
    have = {(e["model"], e["precision"], e["tower"]) for e in doc["files"].values()}
    assert have == {(m, p, t) for m in MODELS for p in ("fp32", "bf16", "fp16") for t in ("image", "text")}
    for name in MODELS:
        assert doc["checkpoints"][name] == get_card(name).sha256
        feats = load_stored(STORED, name, "fp32", probe, get_card(name).sha256)
        assert torch.allclose(feats.image.norm(dim=1), torch.ones(len(probe.images)), atol=1e-5)


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / FOLDER
    shutil.copytree(STORED, dest)
    return dest


def test_a_changed_file_is_refused_naming_it(tmp_path, probe):
    folder = _copy(tmp_path)
    victim = next(
        n
        for n, e in read_manifest(folder)["files"].items()
        if e["model"] == "fixture-tiny" and e["precision"] == "fp32"
    )
    data = bytearray((folder / victim).read_bytes())
    data[-1] ^= 1
    (folder / victim).write_bytes(bytes(data))
    with pytest.raises(StoredFeaturesError, match=f"{victim}: sha256 differs"):
        load_stored(folder, "fixture-tiny", "fp32", probe, get_card("fixture-tiny").sha256)


def test_another_checkpoint_or_probe_set_is_refused(tmp_path, probe):
    folder = _copy(tmp_path)
    with pytest.raises(StoredFeaturesError, match="the card pins"):
        load_stored(folder, "fixture-tiny", "fp32", probe, "0" * 64)
    doc = yaml.safe_load((folder / "MANIFEST.yaml").read_text(encoding="utf-8"))
    doc["probe_digest"] = "f" * 64
    (folder / "MANIFEST.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(StoredFeaturesError, match="computed on probe set"):
        load_stored(folder, "fixture-tiny", "fp32", probe, None)
    (folder / "MANIFEST.yaml").unlink()
    with pytest.raises(StoredFeaturesError, match=r"MANIFEST.yaml: cannot read"):
        load_stored(folder, "fixture-tiny", "fp32", probe, None)


def test_compare_fails_a_moved_tower_and_passes_the_same(probe):
    ref = load_stored(STORED, "fixture-tiny-rn", "fp32", probe, None)
    same = ProbeFeatures(ref.image_names, ref.captions, ref.image.clone(), ref.text.clone())
    assert compare_stored(same, ref, 1e-5, "same").ok
    moved = ProbeFeatures(ref.image_names, ref.captions, ref.image.clone(), ref.text + 2e-5)
    report = compare_stored(moved, ref, 1e-5, "moved")
    assert not report.ok and "FAIL" in report.table() and report.drifts["image"].max_abs == 0.0


def test_loader_path_equals_preprocess_path(probe):
    """The batch loader's in-place transform gives the pixels of preprocess (so both paths can be held to the reference)."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.gates.features import EncoderSource, probe_features

    name = "fixture-tiny"
    encoder = load_encoder(get_card(name), MODELS[name][1], device="cpu")
    ours = probe_features(EncoderSource(encoder, 16), probe)
    loader = loader_image_features(encoder, probe.images, 16)
    assert (loader - ours.image).abs().max() <= 1e-6


def test_precision_tolerances_are_written_with_their_evidence():
    for p in ("bf16", "fp16"):
        for model in MODELS:
            tol = precision_tolerance(p, model)
            assert 0 < tol.max_abs < 0.1 and "measured" in tol.why
    assert cpu_supports(torch.float32) is None
