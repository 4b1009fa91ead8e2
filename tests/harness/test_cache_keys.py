"""The inert files of qaclip_harness/cache/keys.yaml never run while anything a cache holds is made.

The source digest in every cache key leaves out the files ``keys.yaml`` lists as inert. This is
the proof that it may: every step whose output a cache keeps (fixture data generated, a model
loaded or exported, data identified, pixels decoded, features and classifiers computed with their
canaries, cached entries checked and read) runs here under a profiler, on both fixture models,
the native, transformers (both preprocessing paths) and ONNX backends, cold and warm, and no code
of an inert file may run in them.
What an inert file does elsewhere in a run (between those steps) reaches the features only
through state, which the canary recomputed on every reuse would show.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qaclip_harness.cache import keys

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def traced(seen: set[str]) -> Iterator[None]:
    """Record the source file of every Python function called (in any thread started meanwhile) into ``seen``."""

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)

    old = sys.getprofile()
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(old)
        threading.setprofile(None)


def _package_names(files: set[str]) -> set[str]:
    out = set()
    for f in files:
        path = Path(f).resolve()
        for base in keys.PACKAGES:
            if path.is_relative_to(base):
                out.add(f"{base.name}/{path.relative_to(base).as_posix()}")
    return out


def _wrap(monkeypatch, seen: set[str], owner: object, name: str) -> None:
    original = getattr(owner, name)

    def window(*args, **kwargs):
        with traced(seen):
            return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, window)


def test_the_tracer_sees_a_call_into_an_inert_file():
    """The proof below can fail: a step that calls the metrics is seen doing so."""
    import torch

    from qaclip_harness.metrics.retrieval import evaluate_retrieval

    seen: set[str] = set()
    with traced(seen):
        evaluate_retrieval([1, 2], torch.eye(2), [1, 2], torch.eye(2), {1: [1], 2: [2]}, k=1)
    assert any(keys.is_inert(n) for n in _package_names(seen))


@pytest.mark.slow
def test_no_inert_file_runs_while_cached_results_are_made(tmp_path, monkeypatch):
    from qaclip_core.registry import get_card
    from qaclip_harness import backends
    from qaclip_harness.cache import Cache
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.eval import runner
    from qaclip_harness.eval.cached import CaseCache, model_fields
    from qaclip_harness.fetch.datasets import resolve_dataset
    from qaclip_harness.fixture import MODELS
    from qaclip_harness.fixture.shapes import write_shapes_dataset

    monkeypatch.setenv("QACLIP_CACHE", str(tmp_path / "cache"))
    seen: set[str] = set()
    with traced(seen):
        write_shapes_dataset(tmp_path / "data")
        data = {
            name: resolve_dataset(get_dataset(name), tmp_path / "data")
            for name in ("fixture-shapes", "fixture-shapes-cls")
        }
    for name in ("identify_images", "image_features", "text_features", "classifier"):
        _wrap(monkeypatch, seen, runner, name)
    _wrap(monkeypatch, seen, backends, "load_encoder")
    from qaclip_harness.fixture.hf import write_converted

    checkpoints = {name: path for name, (_, path) in MODELS.items()}
    for folder in write_converted(tmp_path / "hf"):  # the transformers backend, on both preprocessing paths
        for name in ("hf-fixture-tiny", "hf-fixture-tiny-processor"):
            if get_card(name).hub_repo == f"{folder.parent.name}/{folder.name}":
                checkpoints[name] = folder
    runs = [(model, "pytorch") for model in checkpoints] + [("fixture-tiny", "onnx")]
    assert len(runs) == 5, runs  # both native models, both transformers cards, the ONNX export
    for model, backend in runs:
        card = get_card(model)
        for _ in range(2):  # cold (the export made, pixels decoded and stored), then warm (everything read back)
            encoder = backends.load_encoder(
                card, checkpoints[model], device="cpu", backend_name=None if backend == "pytorch" else backend
            )
            for ds in data.values():
                cc = CaseCache(Cache.at(tmp_path / "cache"), model_fields(encoder, card.sha256, card, backend=backend))
                runner.evaluate_card(encoder, ds, progress=False, batch_size=32, num_workers=2, cache=cc)
        for entry in (tmp_path / "cache" / "features").iterdir():  # features again, from the cached pixels
            entry.unlink()
        runner.evaluate_card(encoder, data["fixture-shapes"], progress=False, batch_size=32, cache=cc)
    ran = _package_names(seen)
    # the tracer saw the steps: the model, the decoding, the pixel and feature caches, the canary, the export
    for expected in (
        "qaclip_core/model/vision.py",
        "qaclip_core/transforms.py",
        "qaclip_harness/data/loader.py",
        "qaclip_harness/cache/pixels.py",
        "qaclip_harness/cache/features.py",
        "qaclip_harness/cache/identity.py",
        "qaclip_harness/eval/canary.py",
        "qaclip_harness/export/onnx.py",
        "qaclip_harness/fixture/shapes.py",
    ):
        assert expected in ran, expected
    assert sorted(n for n in ran if keys.is_inert(n)) == []


def test_every_inert_rule_names_a_file_or_folder_that_exists():
    for rule in keys.key_rules()["inert"]:
        assert (REPO / rule.rstrip("/")).exists(), rule
