"""The golden store and comparison on synthetic features: round trip, drift, and the errors that name the file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from qaclip_harness.gates.features import ProbeFeatures
from qaclip_harness.gates.golden import GoldenError, GoldenMissing, compare_golden, load_golden, save_golden
from qaclip_harness.gates.tolerances import golden_tolerance
from qaclip_harness.probe import load_probe_set


def _features(seed: int = 0) -> ProbeFeatures:
    probe = load_probe_set()
    g = torch.Generator().manual_seed(seed)
    norm = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    return ProbeFeatures(
        list(probe.image_names),
        list(probe.captions),
        norm(torch.randn(len(probe.images), 16, generator=g)),
        norm(torch.randn(len(probe.captions), 16, generator=g)),
    )


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    return path


def test_round_trip_and_manifest(tmp_path, checkpoint):
    probe, feats = load_probe_set(), _features()
    path = save_golden(tmp_path, "m", "fp32", "cpu", feats, checkpoint, probe)
    assert path.name == "m-fp32-cpu.pt"
    back, entry = load_golden(tmp_path, "m", "fp32", "cpu", probe)
    assert torch.equal(back.image, feats.image) and back.captions == feats.captions
    assert entry["probe_digest"] == probe.digest and entry["device_kind"] == "cpu"
    report = compare_golden(back, feats, golden_tolerance("fp32"))
    assert report.ok and report.top1 == {"image": (30, 30), "text": (64, 64)}


def test_drift_beyond_tolerance_fails_with_the_worst_item():
    golden = _features()
    moved = replace(golden, text=golden.text.clone())
    moved.text[5, 0] += 1e-3  # one component of one caption
    report = compare_golden(moved, golden, golden_tolerance("fp32"))
    assert not report.ok and report.tower_ok("image") and not report.tower_ok("text")
    assert report.drifts["text"].worst == repr(golden.captions[5]) and "FAIL" in report.table()
    # the same drift is within the fp16 tolerance
    assert compare_golden(moved, golden, golden_tolerance("fp16")).ok


def test_missing_changed_and_foreign_goldens_are_named(tmp_path, checkpoint):
    probe = load_probe_set()
    with pytest.raises(GoldenMissing, match=r"no golden features m-fp16-cpu\.pt in .*--golden-save"):
        load_golden(tmp_path, "m", "fp16", "cpu", probe)
    path = save_golden(tmp_path, "m", "fp32", "cpu", _features(), checkpoint, probe)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(GoldenError, match=r"m-fp32-cpu\.pt: its sha256 differs"):
        load_golden(tmp_path, "m", "fp32", "cpu", probe)
    save_golden(tmp_path, "m", "fp32", "cpu", _features(), checkpoint, probe)
    manifest = tmp_path / "manifest.json"
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    doc["goldens"]["m-fp32-cpu.pt"]["probe_digest"] = "0" * 64
    manifest.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(GoldenError, match=r"recorded on another probe set"):
        load_golden(tmp_path, "m", "fp32", "cpu", probe)


def test_a_lost_manifest_is_named_not_skipped(tmp_path, checkpoint):
    probe = load_probe_set()
    save_golden(tmp_path, "m", "fp32", "cpu", _features(), checkpoint, probe)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(GoldenError, match=r"m-fp32-cpu\.pt is there but .*manifest\.json is missing") as e:
        load_golden(tmp_path, "m", "fp32", "cpu", probe)
    assert not isinstance(e.value, GoldenMissing)  # an error, not a skip


def test_a_manifest_entry_that_is_not_an_object_is_named(tmp_path, checkpoint):
    probe = load_probe_set()
    save_golden(tmp_path, "m", "fp32", "cpu", _features(), checkpoint, probe)
    manifest = tmp_path / "manifest.json"
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    doc["goldens"]["m-fp32-cpu.pt"] = ["not", "an", "object"]
    manifest.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(GoldenError, match=r"manifest\.json: goldens\.m-fp32-cpu\.pt: expected an object .* got a list"):
        load_golden(tmp_path, "m", "fp32", "cpu", probe)


@pytest.mark.parametrize("damage", ["nan", "rows", "width"])
def test_golden_features_of_the_wrong_shape_or_nan_name_the_file(tmp_path, checkpoint, damage):
    probe = load_probe_set()
    feats = _features()
    if damage == "nan":
        feats.text[3, 0] = float("nan")
    elif damage == "rows":
        feats = replace(feats, image=feats.image[:-1])
    else:
        feats = replace(feats, text=torch.nn.functional.normalize(torch.randn(len(feats.captions), 8), dim=-1))
    save_golden(tmp_path, "m", "fp32", "cpu", feats, checkpoint, probe)
    with pytest.raises(GoldenError, match=r"m-fp32-cpu\.pt: the (image|text) features"):
        load_golden(tmp_path, "m", "fp32", "cpu", probe)


def test_current_features_of_another_width_name_the_golden_file(tmp_path):
    golden, current = _features(), _features(1)
    current = replace(current, image=current.image[:, :8], text=current.text[:, :8])
    with pytest.raises(GoldenError, match=r"g\.pt: cannot compare .*different shapes"):
        compare_golden(current, golden, golden_tolerance("fp32"), tmp_path / "g.pt")
