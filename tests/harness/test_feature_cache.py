"""The feature cache: a second evaluation reuses every feature with the same result, the modes do what they say,
every entry is checked on read (damaged, foreign, short, NaN or shifted entries recomputed with one warning), the
canary catches what the key cannot name, the key moves with the source and the numeric settings, data rewritten
in place is read again, and the report says what was reused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from qaclip_core.registry import get_card
from qaclip_harness.backends import load_encoder
from qaclip_harness.cache import Cache, keys
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


def _damage(entry: Path, how: str) -> None:
    """Damage the feature entry ``entry`` (its .npz payload; its .json record beside it) as ``how`` says."""
    import io
    import json
    import pickle

    import numpy as np

    from qaclip_harness.cache.features import pack, unpack

    record = entry.with_suffix(".json")
    meta = json.loads(record.read_text())
    arrays = unpack(entry.read_bytes())
    if how == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
        return
    if how == "rows shifted, record intact":
        arrays["features"] = np.roll(arrays["features"], 1, axis=0)
        entry.write_bytes(pack(arrays))
        return
    if how == "pickle":
        buf = io.BytesIO()
        np.savez(buf, features=np.array([{"a": 1}], dtype=object))
        data = buf.getvalue()
    elif how == "bare pickle":
        data = pickle.dumps(arrays["features"].tolist())
    else:
        if how == "nan":
            arrays["features"][3, 0] = np.nan
        elif how == "too few rows":
            arrays["features"] = arrays["features"][:-1]
            if "ids" in arrays:
                arrays["ids"] = arrays["ids"][:-1]
        elif how == "ids shifted":
            if "ids" not in arrays:
                arrays["features"] = arrays["features"][:, :-1]  # a classifier: one class too few
            else:
                arrays["ids"] = np.roll(arrays["ids"], 1)
        elif how == "a list":
            arrays = {"features": np.arange(3, dtype=np.float32)}
        data = pack(arrays)
    # a consistent record: size, digest and arrays match the damaged payload, so only the content can tell
    from qaclip_harness.cache.features import describe_arrays

    meta.update(bytes=len(data), sha256=__import__("hashlib").sha256(data).hexdigest())
    try:
        meta["arrays"] = describe_arrays(unpack(data))
    except ValueError:
        pass
    entry.write_bytes(data)
    record.write_text(json.dumps(meta))


DAMAGES = [
    "truncated",
    "rows shifted, record intact",
    "pickle",
    "bare pickle",
    "nan",
    "too few rows",
    "ids shifted",
    "a list",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_entry_is_one_warning_then_recomputed_and_rewritten(shapes, encoder, tmp_path, how):
    data = shapes["fixture-shapes-cls"]
    first = _evaluate(encoder, data, tmp_path)
    entries = sorted((tmp_path / "features").glob("*.npz"))
    assert len(entries) == 2  # the classifier and the images
    for entry in entries:
        _damage(entry, how)
    with pytest.warns(CacheWarning) as caught:
        again = _evaluate(encoder, data, tmp_path)
    said = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(said) == len(entries)
    for entry in entries:  # one line per entry, naming its file
        assert sum(str(entry) in line and "recomputing it" in line for line in said) == 1, said
    assert {s["status"] for s in _features(again).values()} == {"computed"} and again.metrics == first.metrics
    assert torch.equal(again.raw["logits"], first.raw["logits"])
    third = _evaluate(encoder, data, tmp_path)  # rewritten: reused from now on
    assert {s["status"] for s in _features(third).values()} == {"reused"} and third.metrics == first.metrics


def test_a_foreign_entry_is_not_used(shapes, encoder, tmp_path):
    """An entry copied under another key (a record of another precision, say) is refused, naming the file."""
    data = shapes["fixture-shapes-cls"]
    _evaluate(encoder, data, tmp_path / "a", precision="fp16")  # the fields say fp16: other keys
    first = _evaluate(encoder, data, tmp_path / "b")
    import json

    def by_step(folder: Path) -> dict:
        return {json.loads(p.read_text())["what"]: p for p in folder.glob("*.json")}

    theirs_by_step = by_step(tmp_path / "a" / "features")
    for step, mine in by_step(tmp_path / "b" / "features").items():
        theirs = theirs_by_step[step]
        shutil.copy(theirs, mine)
        shutil.copy(theirs.with_suffix(".npz"), mine.with_suffix(".npz"))
    with pytest.warns(CacheWarning, match="belongs to another key"):
        again = _evaluate(encoder, data, tmp_path / "b")
    assert {s["status"] for s in _features(again).values()} == {"computed"} and again.metrics == first.metrics


def test_a_change_the_key_cannot_name_is_caught_by_the_canary(shapes, encoder, tmp_path):
    """The loaded model changed behind the key's back (as a patch by a plugin would): recomputed, with the cold result."""
    data = shapes["fixture-shapes"]
    _evaluate(encoder, data, tmp_path)
    changed = load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu")
    with torch.no_grad():
        changed.model.visual.ln_post.weight.mul_(1.01)  # the image tower only: the texts still reproduce
        changed.model.bert.encoder.layer[0].output.LayerNorm.bias.add_(0.01)
    with pytest.warns(CacheWarning, match="matches its key but not this run's canary"):
        warm = _evaluate(changed, data, tmp_path)
    cold = evaluate_card(changed, data, progress=False, batch_size=32)
    assert {s["status"] for s in _features(warm).values()} == {"computed"}
    assert warm.metrics == cold.metrics and warm.diagnostics == cold.diagnostics
    assert all("canary" in s["note"] for s in _features(warm).values())


def test_identity_records_spare_the_second_read_until_a_file_changes(shapes, encoder, tmp_path, monkeypatch):
    from qaclip_harness.data.imagenet import IndexedImages

    data = shapes["fixture-shapes-cls"]
    first = _evaluate(encoder, data, tmp_path)
    reads = []
    original = IndexedImages.read_bytes
    mine = str(data.folder)  # the canary reads the probe images through a twin of the reader: not counted

    def counted(self, i):
        if str(self.base.folder).startswith(mine):
            reads.append(i)
        return original(self, i)

    monkeypatch.setattr(IndexedImages, "read_bytes", counted)
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


def test_data_rewritten_in_place_with_its_time_restored_is_read_again(shapes, encoder, tmp_path):
    """Images rewritten with the same size and their modification time put back: a new digest, new features."""
    import os

    from PIL import Image

    data = shapes["fixture-shapes-cls"]
    copy = tmp_path / "data"
    shutil.copytree(data.folder, copy / data.folder.name)
    moved = resolve_dataset(get_dataset("fixture-shapes-cls"), copy)
    first = _evaluate(encoder, moved, tmp_path / "c")
    image = sorted((moved.folder / "test").rglob("*.png"))[0]
    st = image.stat()
    with Image.open(image) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(image)
    with open(image, "r+b") as f:  # the same size: pad or cut the new file to the old length
        f.truncate(st.st_size)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    again = _evaluate(encoder, moved, tmp_path / "c")
    assert again.provenance["data_fingerprint"] != first.provenance["data_fingerprint"]
    assert _features(again)["images"]["status"] == "computed"
    cold = evaluate_card(encoder, moved, progress=False, batch_size=32)
    assert again.provenance["data_fingerprint"] == cold.provenance["data_fingerprint"]
    assert torch.equal(again.raw["logits"], cold.raw["logits"])


def _copy_packages(root: Path) -> list[Path]:
    for pkg in ("qaclip_core", "qaclip_harness"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pt", "images"))
    return [root / "qaclip_core", root / "qaclip_harness"]


# files the deliberate mutations of tools/mutation_check.py edit, and others that run while features are made
IN_KEY = [
    "qaclip_core/transforms.py",
    "qaclip_core/tokenizer.py",
    "qaclip_core/model/vision.py",
    "qaclip_core/checkpoint.py",
    "qaclip_harness/backends/native.py",
    "qaclip_harness/suite/session.py",
    "qaclip_harness/export/onnx.py",
    "qaclip_harness/data/fingerprint.py",
    "qaclip_harness/cache/identity.py",
    "qaclip_harness/fetch/weights.py",
    "qaclip_harness/eval/zeroshot.py",
    "qaclip_core/assets/vocab.txt",
]
INERT = [
    "qaclip_harness/report/tables.py",
    "qaclip_harness/gates/parity.py",
    "qaclip_harness/metrics/retrieval.py",
    "qaclip_harness/expected.py",
]


def test_the_source_digest_holds_every_package_file_but_the_inert_ones():
    names = set(keys.package_files())
    assert all(name in names for name in IN_KEY), sorted(set(IN_KEY) - names)
    assert not names & set(INERT)
    every = set(keys.package_files(inert=True))
    assert every - names == {n for n in every if keys.is_inert(n)} and set(INERT) <= every


@pytest.mark.parametrize("path,moves", [(p, True) for p in IN_KEY[:6]] + [(p, False) for p in INERT[:3]])
def test_editing_a_file_moves_the_key_unless_it_is_inert(tmp_path, path, moves):
    bases = _copy_packages(tmp_path)
    before = keys.digest_files(keys.package_files(bases))
    with open(tmp_path / path, "a", encoding="utf-8") as f:
        f.write("\n# touched\n")
    assert (keys.digest_files(keys.package_files(bases)) != before) is moves


def test_a_loaded_module_from_outside_the_packages_is_in_the_key(tmp_path, monkeypatch):
    """A conftest.py or plugin loaded from the project (not an installed distribution) is part of the source digest."""
    import importlib
    import sys

    (tmp_path / "my_plugin.py").write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = keys.source_digest()
    importlib.import_module("my_plugin")
    try:
        loaded = keys.source_digest()
        assert "my_plugin" in loaded["modules"].split(",") and loaded["outside"] != before["outside"]
        assert loaded["packages"] == before["packages"]
    finally:
        sys.modules.pop("my_plugin", None)


@pytest.mark.parametrize(
    "variable,value",
    [("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_DEFAULT_FPMATH_MODE", "BF16"), ("NVIDIA_TF32_OVERRIDE", "0")],
)
def test_a_variable_that_changes_numerics_moves_the_key(monkeypatch, variable, value):
    monkeypatch.delenv(variable, raising=False)
    before = keys.make_key(keys.run_environment())
    monkeypatch.setenv(variable, value)
    assert keys.numeric_environment()[variable] == value
    assert keys.make_key(keys.run_environment()) != before
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/anywhere")  # a location, not a number: not in the key
    assert "TORCHINDUCTOR_CACHE_DIR" not in keys.numeric_environment()


@pytest.mark.parametrize(
    "flag",
    ["allow_fp16_reduced_precision_reduction", "allow_tf32", "sdp_math", "mkldnn", "threads", "deterministic"],
)
def test_a_numeric_flag_moves_the_key(flag):
    cuda = torch.backends.cuda
    before = keys.make_key(keys.run_environment())
    if flag == "allow_fp16_reduced_precision_reduction":
        old = cuda.matmul.allow_fp16_reduced_precision_reduction
        cuda.matmul.allow_fp16_reduced_precision_reduction = not old
        restore = lambda: setattr(cuda.matmul, "allow_fp16_reduced_precision_reduction", old)  # noqa: E731
    elif flag == "allow_tf32":
        old = cuda.matmul.allow_tf32
        cuda.matmul.allow_tf32 = not old
        restore = lambda: setattr(cuda.matmul, "allow_tf32", old)  # noqa: E731
    elif flag == "sdp_math":
        old = cuda.math_sdp_enabled()
        cuda.enable_math_sdp(not old)
        restore = lambda: cuda.enable_math_sdp(old)  # noqa: E731
    elif flag == "mkldnn":
        old = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = not old
        restore = lambda: setattr(torch.backends.mkldnn, "enabled", old)  # noqa: E731
    elif flag == "threads":
        old = torch.get_num_threads()
        torch.set_num_threads(old + 1)
        restore = lambda: torch.set_num_threads(old)  # noqa: E731
    else:
        old = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(not old)
        restore = lambda: torch.use_deterministic_algorithms(old)  # noqa: E731
    try:
        assert keys.make_key(keys.run_environment()) != before
    finally:
        restore()
    assert keys.make_key(keys.run_environment()) == before


def test_the_cpu_instruction_set_is_in_the_key():
    cpu = keys.run_environment()["cpu"]
    assert cpu["aten"] == torch.backends.cpu.get_cpu_capability() and cpu["machine"]
    assert isinstance(cpu["isa"], list)


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
