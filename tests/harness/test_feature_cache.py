"""The feature cache: a second evaluation reuses every feature with the same result, the modes do what they say,
the key moves with everything on the feature path and with nothing off it, and the report says what was reused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from qaclip_core.registry import get_card
from qaclip_harness.backends import load_encoder
from qaclip_harness.cache import Cache
from qaclip_harness.cache.keys import FEATURE_PATH, digest_files, source_files
from qaclip_harness.cache.space import CacheWarning
from qaclip_harness.data.catalog import get_dataset
from qaclip_harness.eval.cached import CaseCache, model_fields
from qaclip_harness.eval.runner import evaluate_card
from qaclip_harness.fetch.datasets import resolve_dataset
from qaclip_harness.fixture import CHECKPOINT
from qaclip_harness.fixture.shapes import write_shapes_dataset
from qaclip_harness.report.tables import CaseResult, describe_features, render_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root)
    return {name: resolve_dataset(get_dataset(name), root) for name in ("fixture-shapes", "fixture-shapes-cls")}


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu")


def _evaluate(encoder, data, root, mode="use", **fields):
    card = get_card("fixture-tiny")
    cc = CaseCache(Cache.at(root, mode), model_fields(encoder, card.sha256, card, **fields))
    return evaluate_card(encoder, data, progress=False, batch_size=32, cache=cc)


def _features(out):
    return out.provenance["features"]


@pytest.mark.parametrize("dataset", ["fixture-shapes", "fixture-shapes-cls"])
def test_a_second_evaluation_reuses_every_feature_with_the_same_numbers(shapes, encoder, tmp_path, dataset):
    first = _evaluate(encoder, shapes[dataset], tmp_path)
    second = _evaluate(encoder, shapes[dataset], tmp_path)
    assert {s["status"] for s in _features(first).values()} == {"computed"}
    assert {s["status"] for s in _features(second).values()} == {"reused"}
    for step, prov in _features(second).items():
        computed = _features(first)[step]
        assert (prov["key"], prov["run"], prov["date"]) == (computed["key"], computed["run"], computed["date"])
    assert second.metrics == first.metrics
    assert second.provenance["data_fingerprint"] == first.provenance["data_fingerprint"]
    assert second.provenance["build"] == "generated-seed-0"
    plain = evaluate_card(encoder, shapes[dataset], progress=False, batch_size=32)  # no cache at all
    assert plain.metrics == first.metrics and "features" not in plain.provenance
    assert plain.provenance["data_fingerprint"] == first.provenance["data_fingerprint"]
    if dataset == "fixture-shapes":
        assert second.diagnostics == first.diagnostics == plain.diagnostics  # near ties: the same scores
    else:
        assert torch.equal(second.raw["logits"], first.raw["logits"]) and torch.equal(
            plain.raw["logits"], first.raw["logits"]
        )


def test_refresh_recomputes_and_overwrites_off_touches_nothing_read_only_writes_nothing(shapes, encoder, tmp_path):
    data = shapes["fixture-shapes-cls"]
    off = _evaluate(encoder, data, tmp_path / "off", mode="off")
    assert {s["status"] for s in _features(off).values()} == {"computed"} and not (tmp_path / "off").exists()
    ro = _evaluate(encoder, data, tmp_path / "c", mode="read-only")
    assert all(s["note"].endswith("not stored: the cache is read-only") for s in _features(ro).values())
    assert not (tmp_path / "c" / "features").exists()
    first = _evaluate(encoder, data, tmp_path / "c")
    records = sorted((tmp_path / "c" / "features").glob("*.json"))
    before = {p: p.stat().st_ino for p in records}
    refreshed = _evaluate(encoder, data, tmp_path / "c", mode="refresh")
    assert {s["status"] for s in _features(refreshed).values()} == {"computed"}
    assert sorted((tmp_path / "c" / "features").glob("*.json")) == records  # the same keys, overwritten
    # each entry was written anew (an atomic write renames a new file into place: a new inode); a date
    # comparison would depend on whether the two runs fell in the same second
    assert all(p.stat().st_ino != before[p] for p in records)
    ro = _evaluate(encoder, data, tmp_path / "c", mode="read-only")
    assert {s["status"] for s in _features(ro).values()} == {"reused"} and ro.metrics == first.metrics


@pytest.mark.parametrize("change", [{"precision": "fp16"}, {"backend": "onnx"}, {"compile": True}])
def test_a_change_of_what_runs_the_model_misses(shapes, encoder, tmp_path, change):
    data = shapes["fixture-shapes-cls"]
    _evaluate(encoder, data, tmp_path)
    other = _evaluate(encoder, data, tmp_path, **change)  # the fields say another setting: recomputed
    assert {s["status"] for s in _features(other).values()} == {"computed"}


def test_another_batch_size_or_checkpoint_misses(shapes, encoder, tmp_path):
    data = shapes["fixture-shapes-cls"]
    card = get_card("fixture-tiny")
    _evaluate(encoder, data, tmp_path)
    cc = CaseCache(Cache.at(tmp_path), model_fields(encoder, "0" * 64, card))
    out = evaluate_card(encoder, data, progress=False, batch_size=32, cache=cc)
    assert {s["status"] for s in _features(out).values()} == {"computed"}
    cc = CaseCache(Cache.at(tmp_path), model_fields(encoder, card.sha256, card))
    out = evaluate_card(encoder, data, progress=False, batch_size=16, text_batch_size=100, cache=cc)
    assert {s["status"] for s in _features(out).values()} == {"computed"}


def test_a_damaged_entry_is_recomputed_with_one_line(shapes, encoder, tmp_path):
    data = shapes["fixture-shapes-cls"]
    first = _evaluate(encoder, data, tmp_path)
    for blob in (tmp_path / "features").glob("*.pt"):
        blob.write_bytes(blob.read_bytes()[:100])
    with pytest.warns(CacheWarning, match="feature cache entry .*cannot be read .*recomputing it"):
        again = _evaluate(encoder, data, tmp_path)
    assert {s["status"] for s in _features(again).values()} == {"computed"} and again.metrics == first.metrics
    assert {s["status"] for s in _features(_evaluate(encoder, data, tmp_path)).values()} == {"reused"}


def test_identity_records_spare_the_second_read_until_a_file_changes(shapes, encoder, tmp_path, monkeypatch):
    from qaclip_harness.data.imagenet import IndexedImages

    data = shapes["fixture-shapes-cls"]
    first = _evaluate(encoder, data, tmp_path)
    reads = []
    original = IndexedImages.read_bytes
    monkeypatch.setattr(IndexedImages, "read_bytes", lambda self, i: reads.append(i) or original(self, i))
    again = _evaluate(encoder, data, tmp_path)
    assert reads == [] and again.provenance["data_fingerprint"] == first.provenance["data_fingerprint"]
    image = next((data.folder / "test").rglob("*.png"), None) or next((data.folder / "test").rglob("*.jpg"))
    image.touch()  # the same bytes, a new time: read again (and the same digest comes out)
    again = _evaluate(encoder, data, tmp_path)
    assert len(reads) == 120 and again.provenance["data_fingerprint"] == first.provenance["data_fingerprint"]
    reads.clear()
    cc = CaseCache(
        Cache.at(tmp_path, verify=True),
        model_fields(encoder, get_card("fixture-tiny").sha256, get_card("fixture-tiny")),
    )
    evaluate_card(encoder, data, progress=False, batch_size=32, cache=cc)
    assert len(reads) == 120  # --verify trusts no record


# the deliberate mutations of tests/harness/test_cache_mutations.py: each file must be on the feature path
ON_PATH = [
    "qaclip_core/transforms.py",
    "qaclip_core/tokenizer.py",
    "qaclip_core/model/vision.py",
    "qaclip_core/model/text.py",
    "qaclip_harness/data/loader.py",
    "qaclip_harness/data/retrieval.py",
    "qaclip_harness/data/imagenet.py",
    "qaclip_harness/eval/features.py",
    "qaclip_harness/eval/zeroshot.py",
    "qaclip_harness/backends/native.py",
    "qaclip_harness/data/prompts.py",
    "qaclip_core/assets/vocab.txt",
]
OFF_PATH = [
    "qaclip_harness/report/tables.py",
    "qaclip_harness/gates/parity.py",
    "qaclip_harness/metrics/retrieval.py",
    "qaclip_harness/expected.py",
    "qaclip_harness/suite/session.py",
    "expected/fixture-shapes.yaml",
]


def _tree_digest(root: Path) -> str:
    parts = [(root / base.name, rel) for base, rel in FEATURE_PATH]
    return digest_files(source_files(parts))


def test_the_feature_path_holds_the_model_tokenizer_preprocessing_readers_loader_and_loop():
    names = set(source_files())
    assert all(name in names for name in ON_PATH), sorted(set(ON_PATH) - names)
    assert not names & set(OFF_PATH)


@pytest.mark.parametrize("path,on", [(p, True) for p in ON_PATH[:4]] + [(p, False) for p in OFF_PATH[:3]])
def test_editing_a_file_moves_the_key_only_on_the_feature_path(tmp_path, path, on):
    for pkg in ("qaclip_core", "qaclip_harness"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pt", "images"))
    before = _tree_digest(tmp_path)
    with open(tmp_path / path, "a", encoding="utf-8") as f:
        f.write("\n# touched\n")
    assert (_tree_digest(tmp_path) != before) is on


def test_the_report_says_computed_or_reused_and_is_otherwise_the_same():
    common = {"dataset": "fixture-shapes", "model": "fixture-tiny", "status": "passed", "measured": {"t2i_r1": 95.1}}
    computed = {
        "status": "computed",
        "cache": "use",
        "steps": {
            "images": {"status": "computed", "key": "a" * 64, "run": "host pid 1", "date": "2025-01-02T03:04:05Z"},
            "texts": {"status": "computed", "key": "b" * 64, "run": "host pid 1", "date": "2025-01-02T03:04:05Z"},
        },
    }
    reused = {
        "status": "reused",
        "cache": "use",
        "steps": {name: dict(step, status="reused") for name, step in computed["steps"].items()},
    }
    assert describe_features(computed) == "features computed (cache use; keys images aaaaaaaaaaaa, texts bbbbbbbbbbbb)"
    assert describe_features(reused) == (
        "features reused from host pid 1, 2025-01-02T03:04:05Z "
        "(cache use; keys images aaaaaaaaaaaa, texts bbbbbbbbbbbb)"
    )
    mixed = {"cache": "read-only", "steps": {"images": reused["steps"]["images"], "texts": computed["steps"]["texts"]}}
    assert describe_features(mixed) == (
        "features: images reused from host pid 1, 2025-01-02T03:04:05Z; texts computed "
        "(cache read-only; keys images aaaaaaaaaaaa, texts bbbbbbbbbbbb)"
    )
    first = render_text([CaseResult(**common, features=computed)])
    second = render_text([CaseResult(**common, features=reused)])
    assert "fixture-tiny: features computed" in first and "fixture-tiny: features reused from host pid 1" in second
    strip = lambda text: [line for line in text.splitlines() if not re.search(r": features[ :]", line)]  # noqa: E731
    assert strip(first) == strip(second)
