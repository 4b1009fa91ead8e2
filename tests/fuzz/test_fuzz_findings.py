"""What the fuzz campaign found, kept as regular tests: each input that once escaped as another exception (or was
silently accepted), with the one error that names the file and the place now, or the miss a cache record is."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest

from qaclip_core.errors import CardError, QAClipError
from tests.fuzz.support import LAUGHS

DEEP_JSON = "[" * 100_000
HUGE_INT = "9" * 5000

EXPECTED = """dataset: muge
kind: retrieval
split: valid
sources: {paper: a paper}
tolerance: {fp32: {t2i: {abs: 0.5, why: rounding}}}
models:
  qa-clip-rn50: {gate: paper, paper: {t2i_r1: 48.0}}
"""


def _expected(tmp_path: Path, text: str):
    from qaclip_harness.expected import load_expected

    (tmp_path / "muge.yaml").write_text(text, encoding="utf-8")
    return lambda: load_expected(tmp_path)


@pytest.mark.parametrize(
    "text,needle",
    [
        (EXPECTED + "  qa-clip-rn50: {gate: paper, paper: {t2i_r1: 99.0}}\n", "duplicate key 'qa-clip-rn50'"),
        (EXPECTED.replace("gate: paper,", "gate: [paper],"), "models.qa-clip-rn50.gate must be a non-empty string"),
        (EXPECTED.replace("abs: 0.5", "abs: .nan"), "tolerance.fp32.t2i.abs must be a finite number"),
        (EXPECTED.replace("48.0", ".inf"), "models.qa-clip-rn50.paper.t2i_r1 must be a finite number"),
        (EXPECTED.replace("why: rounding", "why: [rounding]"), "tolerance.fp32.t2i.why must say where"),
        (EXPECTED.replace("dataset: muge", "dataset: [muge]"), "dataset must be a non-empty string"),
        (EXPECTED.replace("{paper: a paper}", "{paper: {cite: c, build: [1]}}"), "sources.paper must be a citation"),
        (LAUGHS, "more than 1,000,000 values"),
        ("[" * 400 + "]" * 400, "nests deeper than 100 levels"),
        ("x: " + HUGE_INT, "more digits than Python converts"),
        ("\x00dataset: muge", "is not valid YAML"),
        (EXPECTED.replace("{paper: a paper}", '{paper: a paper, "\\nx": b}'), "sources holds the key '\\nx'"),
    ],
    ids=[
        *("duplicate-key", "gate-list", "nan-tolerance", "inf-value", "why-list", "dataset-list", "build-list"),
        *("alias-bomb", "deep", "huge-int", "nul", "newline-key"),
    ],
)
def test_expected_files(tmp_path, text, needle):
    with pytest.raises(QAClipError, match=re_escape(needle)) as e:
        _expected(tmp_path, text)()
    assert str(tmp_path / "muge.yaml") in str(e.value)


def _report(tmp_path: Path, results: list | str) -> Path:
    path = tmp_path / "run" / "report.json"
    path.parent.mkdir(exist_ok=True)
    doc = results if isinstance(results, str) else json.dumps({"results": results})
    path.write_text(doc, encoding="utf-8")
    return path


CASE = {"dataset": "muge", "model": "m", "status": "failed", "kind": "retrieval"}


@pytest.mark.parametrize(
    "checks,needle",
    [
        ([{"measured": 1.0, "delta": 1.0, "tolerance": 0.5, "ok": False}], "'metric' is a required property"),
        ([{"metric": "t2i_r1", "measured": [1.0], "ok": False}], "results[0].checks[0].measured"),
        ([{"metric": ["t2i_r1"], "ok": False}], "results[0].checks[0].metric"),
        ([{"metric": "t2i_r1", "measured": 1.0, "delta": 1.0, "format": ["x"]}], "results[0].checks[0].format"),
        ([{"metric": "t2i_r1", "measured": 1.0, "delta": 1.0, "format": "{x}"}], "results[0].checks[0].format"),
        ({"steps": {"images": {"status": ["reused"]}}}, "results[0].features.steps.images.status"),
    ],
    ids=["no-metric", "measured-list", "metric-list", "format-list", "format-braces", "step-status-list"],
)
def test_report_json_checks_the_renderers_need(tmp_path, checks, needle):
    from qaclip_harness.report.diff import load_report

    case = {**CASE, "checks": checks} if isinstance(checks, list) else {**CASE, "features": checks}
    path = _report(tmp_path, [case])
    with pytest.raises(QAClipError, match=re_escape(needle)) as e:
        load_report(path)
    assert str(path) in str(e.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_report_json_values_the_schema_allows_render(tmp_path):
    """null where a number was, a sources entry, feature steps: every renderer takes them."""
    from qaclip_harness.report.diff import compare, load_report, render
    from qaclip_harness.report.history import build, load_runs, render_markdown
    from qaclip_harness.report.html import render_html

    checks = [
        {"metric": "t2i_r1", "measured": None, "expected": 1.0, "delta": None, "tolerance": 0.5, "ok": False},
        {"metric": "top1", "measured": 1.0, "expected": 1.0, "delta": 0.0, "tolerance": None, "ok": True},
    ]
    results = [
        {**CASE, "checks": checks, "sources": {"other": {"t2i_r1": {"delta": 1.5}}}, "gate": "paper"},
        {**CASE, "dataset": "cifar-10", "kind": "zeroshot", "checks": checks[1:], "measured": {"top1": None}},
    ]
    doc = load_report(_report(tmp_path, results))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("qaclip_harness.report.plots.missing", lambda: "no plots here")
        page = render_html(doc, history=build(load_runs([tmp_path / "run"])))
    assert "t2i_r1" in page and "other: T2I R@1 +1.5" in page
    render(compare(doc, doc))
    render_markdown(build(load_runs([tmp_path / "run", tmp_path / "run"])))


@pytest.mark.parametrize(
    "bench,needle",
    [
        ({"extra_info": ["x"]}, "stats and extra_info must be mappings"),
        ({"extra_info": {"items_per_s": "fast"}}, "benchmarks[0].extra_info.items_per_s must be a positive number"),
        ({"stats": {"mean": -1}}, "benchmarks[0].stats.mean must be a positive number"),
        ({"group": ["g"]}, "benchmarks[0].group must be a string"),
        ("not a mapping", "benchmarks[0] must be a mapping"),
    ],
    ids=["info-list", "speed-text", "negative-mean", "group-list", "record-text"],
)
def test_benchmark_json_and_history_over_it(tmp_path, bench, needle):
    from qaclip_harness.report.history import load_runs
    from qaclip_harness.report.throughput import load_benchmark_json

    path = tmp_path / "run" / "bench.json"
    path.parent.mkdir()
    record = bench if isinstance(bench, str) else {"group": "g", "name": "n", "stats": {"mean": 1.0}, **bench}
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": [record]}), encoding="utf-8")
    for read in (lambda: load_benchmark_json(path), lambda: load_runs([tmp_path / "run"])):
        with pytest.raises(QAClipError, match=re_escape(needle)) as e:
            read()
        assert str(path) in str(e.value)


@pytest.mark.parametrize("text", [DEEP_JSON, HUGE_INT, '{"a": 1, "a": 2}', "\ufeff\x00"])
def test_json_readers_name_the_file(tmp_path, text):
    """index.json, the golden manifest, an export manifest, the lock file, a predictions file: one error each."""
    from qaclip_core.lockfile import ChecksumLock
    from qaclip_harness.data.elevater import read_index
    from qaclip_harness.export.manifest import read_manifest as read_export
    from qaclip_harness.gates.golden import read_manifest as read_golden
    from qaclip_harness.report.ranks import read_predictions

    (tmp_path / "index.json").write_text(text, encoding="utf-8")
    (tmp_path / "manifest.json").write_text(text, encoding="utf-8")
    (tmp_path / "lock.json").write_text(text, encoding="utf-8")
    (tmp_path / "cifar-10.json").write_text(text, encoding="utf-8")
    readers = {
        "index.json": lambda: read_index(tmp_path, 3),
        "manifest.json": lambda: read_golden(tmp_path),
        "manifest.json ": lambda: read_export(tmp_path),
        "lock.json": lambda: ChecksumLock(tmp_path / "lock.json").entry("k"),
    }
    for name, read in readers.items():
        with pytest.raises(QAClipError) as e:
            read()
        assert name.strip() in str(e.value), str(e.value)
    (tmp_path / "index.json").unlink()
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "lock.json").unlink()
    with pytest.raises(QAClipError, match=r"cifar-10\.json"):
        read_predictions(tmp_path)


def test_export_manifest_tower_sides_must_be_mappings(tmp_path):
    from qaclip_harness.export.manifest import FORMAT, read_manifest

    tower = {"file": "image.onnx", "input": 3, "output": {"name": "y", "shape": [1], "dtype": "float32"}}
    doc = {
        "format": FORMAT,
        **dict.fromkeys(["model", "arch", "precision", "exporter"], "x"),
        **dict.fromkeys(["opset", "resolution", "context_length", "embed_dim"], 1),
        "normalisation": {},
        "logit_scale": 1.0,
        "towers": {"image": tower, "text": tower},
        "files": {},
        "versions": {},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(QAClipError, match=r"towers\.image\.input must be a mapping"):
        read_manifest(tmp_path)
    tower.update(input=tower["output"], file=["image.onnx"])  # the long run's find: unhashable in verify_files
    (tmp_path / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(QAClipError, match=r"towers\.image\.file must be a file name"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("rows", ["null\n", '{"text_id": "1", "image_ids": [1]}\n', '{"text_id": 1, "image_ids": 3}\n'])
def test_dumped_prediction_rows_are_checked(tmp_path, rows):
    from qaclip_harness.report.ranks import read_predictions

    (tmp_path / "test_texts.tr.jsonl").write_text('{"image_id": 1, "text_ids": [1]}\n', encoding="utf-8")
    (tmp_path / "test_predictions.jsonl").write_text(rows, encoding="utf-8")
    with pytest.raises(QAClipError, match=r"test_predictions\.jsonl"):
        read_predictions(tmp_path)


@pytest.mark.parametrize(
    "line,needle",
    [('{"text_id": ' + HUGE_INT + "}", "a number with too many digits"), ("[" * 100_000, "nesting too deep")],
    ids=["huge-int", "deep"],
)
def test_texts_jsonl(tmp_path, line, needle):
    from qaclip_harness.data.retrieval import read_texts

    path = tmp_path / "test_texts.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(QAClipError, match=rf"test_texts\.jsonl:1: invalid JSON \({needle}\)"):
        read_texts(path)


def _zip(path: Path, members: dict) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")
        for name, data in members.items() if isinstance(members, dict) else members:
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "members,needle",
    [
        ([("test/0/a.png", b"x"), ("test/0/a.png/inside", b"y")], "is a file, but 'test/0/a.png/inside' needs it"),
        ([("test/0/a.png/inside", b"y"), ("test/0/a.png", b"x")], "is a file, but"),
        ([("test", b"x"), ("test/", b"")], "is a file, but 'test/' makes it a folder"),
        ([("test/0/a.png", b"x"), ("test/0/a.png", b"y")], "is in the archive twice"),
        ([("x" * 300 + "/a.png", b"x")], "longer than 255 bytes"),
        ([("..", b"x")], "would extract outside"),
    ],
    ids=["file-then-folder", "folder-then-file", "folder-entry", "twice", "long-name", "dots"],
)
def test_zip_members_that_collide(tmp_path, members, needle):
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.fetch.datasets import _extract_zip

    (tmp_path / "datasets").mkdir()
    archive = _zip(tmp_path / "a.zip", members)
    with pytest.raises(QAClipError, match=re_escape(needle)) as e:
        _extract_zip(archive, get_dataset("kitti-distance"), tmp_path / "datasets")
    assert str(archive) in str(e.value)
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == []


def test_zip_member_of_a_version_zipfile_cannot_read(tmp_path):
    """A member declaring a zip version zipfile does not implement: NotImplementedError before, one error now."""
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.fetch.datasets import _extract_zip

    (tmp_path / "datasets").mkdir()
    archive = _zip(tmp_path / "a.zip", {"test/0/a.png": b"x" * 10})
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6] = 99  # the central directory's "version needed to extract": 9.9
    archive.write_bytes(bytes(data))
    with pytest.raises(QAClipError, match=r"a\.zip"):
        _extract_zip(archive, get_dataset("kitti-distance"), tmp_path / "datasets")
    assert list((tmp_path / "datasets").iterdir()) == []


@pytest.mark.parametrize("record", ["[1, 2]", DEEP_JSON, '"text"'])
def test_cache_records_that_are_not_records_are_misses(tmp_path, record):
    import numpy as np

    from qaclip_harness.cache.features import FeatureStore
    from qaclip_harness.cache.identity import IdentityRecords, signature
    from qaclip_harness.cache.keys import make_key
    from qaclip_harness.cache.pixels import PixelStore

    fields = {"what": "x"}
    key = make_key(fields)
    FeatureStore(tmp_path, "use", run="r").save(fields, {"features": np.zeros((2, 3), np.float32)}, "x")
    store = FeatureStore(tmp_path, "read-only", run="r")
    assert store.lookup(fields)[0] is not None  # the intact entry is a hit
    (store.folder / f"{key}.json").write_text(record, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays, why = store.lookup(fields)
    assert arrays is None and "unusable" in why
    pixel_fields = PixelStore.fields("f", 2, {}, None)
    entry = tmp_path / "pixels" / make_key(pixel_fields)
    entry.mkdir(parents=True)
    np.save(entry / "pixels.npy", np.zeros((1, 2, 2, 3), dtype=np.uint8))
    (entry / "meta.json").write_text(record, encoding="utf-8")
    assert PixelStore(tmp_path, writes=False).open(pixel_fields, [1]) is None
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "identity").mkdir()
    (tmp_path / "identity" / f"{signature('k', [image])}.json").write_text(record, encoding="utf-8")
    assert IdentityRecords(tmp_path, writes=False).images_digest("k", [image], lambda: "computed") == "computed"


@pytest.mark.parametrize("record", ["[1]", DEEP_JSON])
def test_an_origin_record_that_is_not_one_says_nothing(tmp_path, record):
    from qaclip_harness.data.catalog import ORIGIN_FILE, get_dataset, identify_build

    (tmp_path / ORIGIN_FILE).write_text(record, encoding="utf-8")
    assert identify_build(get_dataset("muge"), tmp_path, None) is None


@pytest.mark.parametrize(
    "text,needle",
    [
        ("models: {a: 1}", "a list under 'models'"),
        ("models: [[1]]", r"models\[0\] must be a mapping"),
        ("- a", "a list under 'models'"),
        (
            "models:\n- {name: x, family: f, display: d, vision: v, text: t, resolution: '224'}",
            "resolution must be int",
        ),
        (
            "models:\n- {name: x, family: f, display: d, vision: v, text: t, resolution: 1, hub: [r]}",
            "hub must be dict",
        ),
        ("[" * 2000, "cannot be read as YAML"),
    ],
    ids=["models-mapping", "card-list", "top-list", "resolution-text", "hub-list", "deep"],
)
def test_model_card_files(tmp_path, text, needle):
    from qaclip_core.registry import load_card_file

    path = tmp_path / "cards.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CardError, match=needle) as e:
        load_card_file(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda card: card.update(dirname="../../elsewhere"), r"dirname must be one folder name"),
        (lambda card: card.update(hub=["x"]), r"hub must be a dict"),
        (lambda card: card.pop("labels"), r"a zero-shot dataset needs labels"),
        (lambda card: card.update(split_size={"classes": "4"}), r"split_size\.classes must be a positive integer"),
        (lambda card: card["hub"].update(member="a/../x.zip"), r"hub\.member must be one file name"),
        (lambda card: card.update(dirname="x" * 300), r"dirname must be one folder name"),  # ENAMETOOLONG once
    ],
    ids=["dirname-path", "hub-list", "no-labels", "size-text", "member-path", "dirname-long"],
)
def test_dataset_card_files(tmp_path, edit, needle):
    import yaml

    from qaclip_harness.data.catalog import CARDS_FILE, load_dataset_cards

    cards = yaml.safe_load(CARDS_FILE.read_text(encoding="utf-8"))["datasets"]
    card = next(c for c in cards if c["name"] == "kitti-distance")
    edit(card)
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": [card]}), encoding="utf-8")
    with pytest.raises(QAClipError, match=needle) as e:
        load_dataset_cards(path)
    assert str(path) in str(e.value) and "datasets[0]" in str(e.value)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda doc: doc["parity"].update(max_abs=".nan"), r"parity\.max_abs must be a finite number"),
        (lambda doc: doc["parity"].update(top_k=2.5), r"parity\.top_k must be a positive integer"),
        (lambda doc: doc["golden"].update(fp16=[1]), r"golden\.fp16 must be a non-empty mapping"),
        (lambda doc: doc.pop("reference_cpu"), r"reference_cpu must be a non-empty mapping"),
        (lambda doc: doc["reference_precision"]["bf16"].update(max_abs=1e-3), r"max_abs must be a non-empty mapping"),
    ],
    ids=["nan", "top-k", "golden-list", "no-reference-cpu", "max-abs-number"],
)
def test_tolerance_files(tmp_path, edit, needle):
    import yaml

    from qaclip_harness.gates.tolerances import TOLERANCES, load_tolerances

    doc = yaml.safe_load(TOLERANCES.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / "tolerances.yaml"
    path.write_text(yaml.safe_dump(doc).replace("'.nan'", ".nan"), encoding="utf-8")
    with pytest.raises(QAClipError, match=needle) as e:
        load_tolerances(path)
    assert str(path) in str(e.value)
