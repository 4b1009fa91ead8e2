"""Fuzz: every JSON and YAML document the suite and the CLI read (tests/fuzz/support.py holds the property).

Expected files, model and dataset cards, tolerances.yaml, report.json (compare-reports, history, the page),
pytest-benchmark JSON, the golden manifest, the lock file, ELEVATER's index.json, ONNX export manifests,
dumped predictions, the origin record of a downloaded dataset, and the cache's records (feature, pixel and
identity records: a bad record is a miss, never an error). Each is generated valid, then mutated at up to
three places and perhaps damaged as bytes; whatever a reader accepts is then used as the suite uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import yaml
from hypothesis import given
from hypothesis import strategies as st

from qaclip_core.errors import QAClipError
from tests.fuzz.support import fuzz, holds, json_bytes, yaml_bytes

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
POINTS = st.floats(0, 100, allow_nan=False, allow_infinity=False)
SMALL = st.floats(1e-9, 1.0, allow_nan=False)
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


@contextmanager
def folder():
    """A fresh folder for one example (function-scoped fixtures do not reset between examples)."""
    with tempfile.TemporaryDirectory(prefix="qaclip-fuzz-") as d:
        yield Path(d)


def no_plots():
    """report.html without its figures (matplotlib costs a second an example; tests/harness draws hostile figures)."""
    return mock.patch("qaclip_harness.report.plots.missing", return_value="plots left out while fuzzing")


# ------------------------------------------------------------------------------------------------
# expected/*.yaml

METRICS = {
    "retrieval": ["t2i_r1", "t2i_r5", "i2t_r1", "i2t_r10", "mean_recall"],
    "zeroshot": ["top1", "top5", "true_prob"],
    "parity": ["image_max_abs_diff", "text_min_cosine", "t2i_top5_violations"],
    "probabilities": ["p_cat", "p_猫"],
}


@st.composite
def expected_docs(draw):
    kind = draw(st.sampled_from(sorted(METRICS)))
    chosen = draw(st.lists(st.sampled_from(METRICS[kind]), min_size=1, max_size=4, unique=True))
    groups = sorted({m.split("_")[0] for m in chosen})
    build = draw(NAMES)
    sources = {"paper": draw(st.text(max_size=20)), "ours": {"cite": "measured here", "build": build}}
    precisions = draw(st.lists(st.sampled_from(["fp32", "fp16", "bf16"]), min_size=1, max_size=3, unique=True))
    tolerance = {p: {g: {"abs": draw(POINTS), "why": "rounding"} for g in groups} for p in precisions}
    if draw(st.booleans()):
        tolerance[precisions[0]]["cross_build"] = {"abs": draw(POINTS), "why": "another build"}
    models = {}
    for model in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            models[model] = {"measured_only": "no published value"}
            continue
        entry = {"gate": draw(st.sampled_from(["paper", "ours"]))}
        for source in ("paper", "ours"):
            entry[source] = {m: draw(POINTS) for m in chosen}
        if draw(st.booleans()):
            entry["report_only"] = "protocol unknown"
        if draw(st.booleans()):
            entry["near_ties"] = {chosen[0]: [draw(NAMES)]}
        if draw(st.booleans()):
            entry["tolerance_off_cpu"] = {precisions[0]: {chosen[0]: {"abs": draw(POINTS), "why": "off the CPU"}}}
        models[model] = entry
    doc = {"dataset": draw(NAMES), "kind": kind, "split": "test", "sources": sources, "tolerance": tolerance}
    doc["models"] = models
    if draw(st.booleans()):
        doc["requires"] = {"backend": "onnx", "precision": precisions[0]}
    return doc


def _use_expected(cases) -> None:
    from qaclip_harness.expected import check_against_catalog

    try:
        check_against_catalog(cases)
    except QAClipError:
        pass  # a dataset without a card: refused by the suite at configure time, as the test below allows
    for case in cases:
        _ = (case.id, case.variant, case.gated, case.near_tie_note(), case.unmet({"backend": "onnx"}))
        builds = [None, *(s.build for s in case.sources.values())]
        for build in builds:
            decision = case.gate_for(build)
            measured = case.values[decision.source] if decision.source else {}
            for precision in case.tolerances:
                for on_cpu in (True, False):
                    checks = case.check(measured, precision, decision, on_cpu)
                    assert all(c.ok for c in checks)  # the published values are within any tolerance of themselves
        case.source_deltas(case.gate_values)


@fuzz(120)
@given(yaml_bytes(expected_docs()))
def test_expected_files(example):
    from qaclip_harness.expected import load_expected

    data, _ = example
    with folder() as d:
        path = d / "dataset.yaml"
        path.write_bytes(data)
        holds("expected/*.yaml", lambda: load_expected(d), QAClipError, [str(path)], d, _use_expected)


# ------------------------------------------------------------------------------------------------
# model cards, dataset cards, tolerances.yaml


@st.composite
def model_cards(draw):
    cards = []
    for name in draw(st.lists(NAMES, min_size=0, max_size=3, unique=True)):
        card = {
            "name": f"fz-{name}",
            "family": draw(st.sampled_from(["qa-clip", "cn-clip", "other"])),
            "display": draw(st.text(max_size=10)),
            "vision": draw(st.sampled_from(["ViT-B-16", "RN50", "ViT-L-14"])),
            "text": draw(st.sampled_from(["RoBERTa-wwm-ext-base-chinese", "RBT3-chinese"])),
            "resolution": draw(st.integers(1, 1024)),
        }
        if draw(st.booleans()):
            card["hub"] = {"repo": f"org/{name}", "filename": f"{name}.pt", "revision": "main"}
        if draw(st.booleans()):
            card.update(sha256=draw(HEX), size=draw(st.integers(1, 2**40)), checksum_source="a page")
        if draw(st.booleans()):
            card["aliases"] = [f"alias-{name}"]
        if draw(st.booleans()):
            card.update(adapter="chineseclip", preprocessing=draw(st.sampled_from(["reference", "processor"])))
        cards.append(card)
    return {"models": cards}


@fuzz(60)
@given(yaml_bytes(model_cards()))
def test_model_cards(example):
    from qaclip_core.registry import load_card_file

    data, _ = example
    with folder() as d:
        path = d / "cards.yaml"
        path.write_bytes(data)
        holds("model cards", lambda: load_card_file(path), QAClipError, [str(path)], d, _use_model_cards)


def _use_model_cards(cards) -> None:
    for card in cards:
        assert isinstance(card.name, str) and isinstance(card.resolution, int) and card.resolution > 0
        _ = (card.arch, card.filename, card.hub_repo, tuple(card.aliases))


def _packaged_dataset_cards() -> list:
    from qaclip_harness.data.catalog import CARDS_FILE

    return yaml.safe_load(CARDS_FILE.read_text(encoding="utf-8"))["datasets"]


@st.composite
def dataset_card_docs(draw):
    cards = copy.deepcopy(_packaged_dataset_cards())
    chosen = draw(st.lists(st.sampled_from(range(len(cards))), min_size=1, max_size=4, unique=True))
    return {"datasets": [cards[i] for i in chosen]}


def _use_dataset_cards(cards, root: Path) -> None:
    from qaclip_harness.data.catalog import identify_build, is_present, missing_parts, missing_reason

    for card in cards:
        folder = root / "datasets" / card.dirname
        _ = (card.downloadable, missing_parts(card, folder), is_present(card, folder), missing_reason(card, root))
        _ = (card.build_of_archive("a/b.zip"), card.build_of_fingerprint("0" * 64))
        identify_build(card, folder, None)
        assert folder.resolve().parent == (root / "datasets").resolve()  # one folder name: never out of the root


@fuzz(50)
@given(yaml_bytes(dataset_card_docs()))
def test_dataset_cards(example):
    from qaclip_harness.data.catalog import load_dataset_cards

    data, _ = example
    with folder() as d:
        path = d / "datasets.yaml"
        path.write_bytes(data)
        holds(
            "dataset cards",
            lambda: load_dataset_cards(path),
            QAClipError,
            [str(path)],
            d,
            lambda cards: _use_dataset_cards(cards, d / "root"),
        )


@st.composite
def tolerance_docs(draw):
    from qaclip_harness.gates.tolerances import TOLERANCES

    doc = yaml.safe_load(TOLERANCES.read_text(encoding="utf-8"))
    for table in (doc["parity"], doc["reference_cpu"], *doc["golden"].values()):
        table["max_abs"] = draw(SMALL)
    return doc


def _use_tolerances(doc, path: Path) -> None:
    from qaclip_harness.gates import tolerances as t

    with mock.patch.object(t, "_doc", return_value=doc):
        t.parity_tolerance()
        t.reference_cpu_tolerance()
        for precision in doc["golden"]:
            t.golden_tolerance(precision)
        for precision, table in (doc.get("reference_precision") or {}).items():
            for model in table["max_abs"]:
                t.precision_tolerance(precision, model)
        for missing in ("fp8", "no-such-model"):
            try:
                t.golden_tolerance(missing)
            except QAClipError:
                pass


@fuzz(60)
@given(yaml_bytes(tolerance_docs()))
def test_tolerances_yaml(example):
    from qaclip_harness.gates.tolerances import load_tolerances

    data, _ = example
    with folder() as d:
        path = d / "tolerances.yaml"
        path.write_bytes(data)
        holds(
            "tolerances.yaml",
            lambda: load_tolerances(path),
            QAClipError,
            [str(path)],
            d,
            lambda doc: _use_tolerances(doc, path),
        )


# ------------------------------------------------------------------------------------------------
# report.json (compare-reports, history, the page) and pytest-benchmark JSON

STATUSES = ["passed", "failed", "skipped", "error", "reported", "not comparable", "interrupted"]


@st.composite
def checks(draw, metric: str):
    measured, expected, tolerance = draw(POINTS), draw(POINTS), draw(POINTS)
    check = {"metric": metric, "measured": measured, "expected": expected, "tolerance": tolerance}
    check.update(delta=measured - expected, ok=abs(measured - expected) <= tolerance)
    if draw(st.integers(0, 4)) == 0:
        check["format"] = draw(st.sampled_from([".1e", ".2f", ".0f"]))
    if draw(st.integers(0, 4)) == 0:
        check["cell"] = f"{measured:.1e}"
    return check


@st.composite
def report_docs(draw):
    results = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["retrieval", "zeroshot", "parity", "probabilities"]))
        metrics = draw(st.lists(st.sampled_from(METRICS[kind]), max_size=3, unique=True))
        r = {
            "dataset": draw(st.sampled_from(["muge", "cifar-10", "fixture-shapes", "parity"])),
            "model": draw(NAMES),
            "status": draw(st.sampled_from(STATUSES)),
            "kind": kind,
            "precision": "fp32",
            "device": "cpu",
            "reason": draw(st.text(max_size=30)),
            "checks": [draw(checks(m)) for m in metrics],
            "measured": {m: draw(POINTS) for m in metrics},
            "counts": {"images": draw(st.integers(0, 10**6))},
            "seconds": draw(st.one_of(st.none(), POINTS)),
            "gate": draw(st.one_of(st.none(), NAMES)),
            "gate_reason": draw(st.text(max_size=20)),
            "sources": {"paper": {m: {"expected": 1.0, "delta": 0.5} for m in metrics}},
            "checkpoint_sha256": draw(st.one_of(st.none(), HEX)),
            "data_fingerprint": draw(st.one_of(st.none(), HEX)),
            "provenance": {
                "build": draw(st.one_of(st.none(), NAMES)),
                "batch_size": 64,
                "counts": {"images": 3},
                "split_check": {"ok": draw(st.booleans()), "cause": "x"},
            },
            "backend": "pytorch",
            "variant": draw(st.sampled_from(["", "onnx fp16"])),
            "features": {
                "cache": "use",
                "steps": {"images": {"status": "reused", "key": "ab", "run": "r", "date": "d"}},
            },
        }
        results.append(r)
    meta = {"time": draw(st.sampled_from(["2026-01-01T00:00:00", "", "x"])), "precision": "fp32", "device": "cpu"}
    env = {"git": {"commit": draw(HEX), "dirty": draw(st.booleans())}, "torch": "2.x"}
    return {"meta": meta, "environment": env, "results": results}


def _use_report(doc, path: Path) -> None:
    from qaclip_harness.report.diff import compare, render
    from qaclip_harness.report.history import build, load_runs, render_markdown, render_text, to_json
    from qaclip_harness.report.html import render_html
    from qaclip_harness.report.tables import CaseResult
    from qaclip_harness.report.tables import render_text as tables_text

    render(compare(doc, doc), "a", "b")
    render(compare(doc, {"results": []}), "a", "b")
    with no_plots():
        render_html(doc)
        history = build(load_runs([path.parent, path.parent]))
        render_html(doc, history=history)
    render_text(history)
    render_markdown(history)
    json.dumps(to_json(history))
    fields = set(CaseResult.__dataclass_fields__)
    tables_text([CaseResult(**{k: v for k, v in r.items() if k in fields}) for r in doc["results"]])


@fuzz(80)
@given(json_bytes(report_docs()))
def test_report_json(example):
    from qaclip_harness.report.diff import load_report

    data, _ = example
    with folder() as d:
        path = d / "run" / "report.json"
        path.parent.mkdir()
        path.write_bytes(data)
        holds("report.json", lambda: load_report(path), QAClipError, [str(path)], d, lambda doc: _use_report(doc, path))


@st.composite
def benchmark_docs(draw):
    benches = []
    for _ in range(draw(st.integers(0, 4))):
        info = {"impl": draw(st.sampled_from(["qaclip_core", "cn_clip", "onnxruntime", "transformers"]))}
        if draw(st.booleans()):
            info["items_per_s"] = draw(st.floats(1e-3, 1e6))
        if draw(st.booleans()):
            info["workers"] = draw(st.integers(0, 8))
        if draw(st.booleans()):
            info["reference_seconds_scaled"] = draw(st.floats(1e-6, 100))
        group = draw(st.sampled_from(["encode_image b16", "encode_text b1", "loader"]))
        benches.append(
            {
                "group": group,
                "name": f"test_{group}",
                "fullname": f"benchmarks/test_x.py::test[{draw(NAMES)}]",
                "stats": {"mean": draw(st.floats(1e-6, 10)), "min": 0.0},
                "extra_info": info,
            }
        )
    return {
        "machine_info": {"node": "n", "cpu": {"brand_raw": "x"}},
        "commit_info": {"id": draw(HEX)},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": benches,
    }


def _use_benchmark(doc, path: Path) -> None:
    from qaclip_harness.report.history import build, load_runs, render_markdown, render_text
    from qaclip_harness.report.html import render_html
    from qaclip_harness.report.throughput import groups, records

    records(doc)
    for g in groups(doc, doc):
        g.ratios()
    with no_plots():
        render_html({"results": []}, [doc], doc)
        history = build(load_runs([path.parent, path.parent]))
        render_html({"results": []}, [doc], doc, history)
    render_text(history)
    render_markdown(history)


@fuzz(60)
@given(json_bytes(benchmark_docs()))
def test_benchmark_json(example):
    from qaclip_harness.report.throughput import load_benchmark_json

    data, _ = example
    with folder() as d:
        path = d / "run" / "0001_bench.json"
        path.parent.mkdir()
        path.write_bytes(data)
        holds(
            "benchmark JSON",
            lambda: load_benchmark_json(path),
            QAClipError,
            [str(path)],
            d,
            lambda doc: _use_benchmark(doc, path),
        )


@fuzz(40)
@given(json_bytes(benchmark_docs()), json_bytes(report_docs(), most=1))
def test_history_over_a_run_with_a_bad_benchmark_file(bench, report):
    """history reads every *.json of a run folder: one that looks like pytest-benchmark's is checked like it."""
    from qaclip_harness.report.history import build, load_runs, render_text

    with folder() as d:
        (d / "run").mkdir()
        (d / "run" / "bench.json").write_bytes(bench[0])
        (d / "run" / "report.json").write_bytes(report[0])
        names = [str(d / "run")]
        holds("history (a run folder)", lambda: render_text(build(load_runs([d / "run"]))), QAClipError, names, d)


# ------------------------------------------------------------------------------------------------
# golden manifest, lock file, index.json, ONNX export manifest, predictions, origin record


@st.composite
def golden_manifests(draw):
    goldens = {}
    for model in draw(st.lists(NAMES, max_size=3, unique=True)):
        goldens[f"{model}-fp32-cpu.pt"] = {
            "model": model,
            "precision": "fp32",
            "device_kind": "cpu",
            "checkpoint_sha256": draw(HEX),
            "probe_digest": draw(HEX),
            "file_sha256": draw(HEX),
            "torch": "2.x",
            "date": "2026-01-01T00:00:00+00:00",
        }
    return {"format": 1, "goldens": goldens}


@fuzz(60)
@given(json_bytes(golden_manifests()))
def test_golden_manifest(example):
    from qaclip_harness.gates.golden import MANIFEST, read_manifest

    data, _ = example
    with folder() as d:
        (d / MANIFEST).write_bytes(data)

        def use(doc):
            for name, entry in doc["goldens"].items():
                _ = (str(name), entry.get("file_sha256"), entry.get("probe_digest"))

        holds("golden manifest", lambda: read_manifest(d), QAClipError, [str(d / MANIFEST)], d, use)


@st.composite
def lock_docs(draw):
    files = {}
    for name in draw(st.lists(NAMES, max_size=3, unique=True)):
        files[f"hf://models/org/{name}@main/{name}.pt"] = {
            "sha256": draw(HEX),
            "size": draw(st.integers(0, 2**40)),
            "recorded": "2026-01-01T00:00:00Z",
        }
    return {"version": 1, "files": files}


@fuzz(60)
@given(json_bytes(lock_docs()), st.booleans())
def test_lock_file(example, record):
    """Reading an entry, or recording a new file (the lock file rewritten whole, or left exactly as it was)."""
    from qaclip_core.lockfile import ChecksumLock

    data, _ = example
    with folder() as d:
        path = d / "qaclip.lock.json"
        path.write_bytes(data)
        lock = ChecksumLock(path)
        key, sha = "hf://models/org/new@main/new.pt", "ab" * 32

        def rewritten(before: dict, after: dict) -> bool:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return set(after) == set(before) and doc["files"][key] == {**doc["files"][key], "sha256": sha, "size": 7}

        if record:
            holds("lock file", lambda: lock.record(key, sha, 7), QAClipError, [str(path)], d, changes=rewritten)
        else:
            holds("lock file", lambda: lock.entry("hf://models/org/a@main/a.pt"), QAClipError, [str(path)], d)


@fuzz(60)
@given(json_bytes(st.lists(st.integers(0, 20), max_size=20)), st.integers(1, 21))
def test_elevater_index_json(example, num_images):
    from qaclip_harness.data.elevater import INDEX_FILE, read_index

    data, _ = example
    with folder() as d:
        (d / INDEX_FILE).write_bytes(data)
        for n in (None, num_images):
            holds("ELEVATER index.json", lambda n=n: read_index(d, n), QAClipError, [str(d / INDEX_FILE)], d)


ONNX_FILES = {"image.onnx": b"an image model", "text.onnx": b"a text model"}


@st.composite
def export_manifests(draw):
    from qaclip_harness.export.manifest import FORMAT

    files = {  # the models the test writes beside it, so that an intact manifest verifies
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in ONNX_FILES.items()
    }
    tower = lambda name, shape: {  # noqa: E731
        "file": f"{name}.onnx",
        "input": {"name": "x", "shape": shape, "dtype": "float32"},
        "output": {"name": "y", "shape": ["batch", 512], "dtype": "float32"},
    }
    return {
        "format": FORMAT,
        "model": draw(NAMES),
        "arch": "ViT-B-16@RoBERTa-wwm-ext-base-chinese",
        "precision": draw(st.sampled_from(["fp32", "fp16"])),
        "opset": draw(st.integers(7, 21)),
        "checkpoint_sha256": draw(st.one_of(st.none(), HEX)),
        "checkpoint_file": "x.pt",
        "resolution": 224,
        "context_length": 52,
        "embed_dim": 512,
        "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "logit_scale": 100.0,
        "towers": {"image": tower("image", ["batch", 3, 224, 224]), "text": tower("text", ["batch", 52])},
        "files": files,
        "versions": {"qaclip_core": "0.1.0", "torch": "2.x"},
        "exporter": "dynamo",
        "verification": {},
    }


@fuzz(60)
@given(json_bytes(export_manifests()))
def test_onnx_export_manifest(example):
    from qaclip_harness.export.manifest import MANIFEST_NAME, read_manifest

    data, _ = example
    with folder() as d:
        (d / MANIFEST_NAME).write_bytes(data)
        for name, content in ONNX_FILES.items():
            (d / name).write_bytes(content)
        names = [str(d)]
        holds(
            "ONNX export manifest",
            lambda: read_manifest(d),
            QAClipError,
            names,
            d,
            lambda m: m.verify_files(d),
            # verifying records each file's digest beside it (<file>.sha256), as every checked file does
            changes=lambda before, after: (
                all(after.get(k) == v for k, v in before.items())
                and all(k.endswith(".sha256") for k in set(after) - set(before))
            ),
        )


@st.composite
def prediction_rows(draw):
    return [
        {"text_id": draw(st.integers(0, 5)), "image_ids": draw(st.lists(st.integers(0, 5), max_size=4))}
        for _ in range(draw(st.integers(0, 4)))
    ]


@fuzz(50)
@given(json_bytes(prediction_rows()), json_bytes(prediction_rows()), st.booleans())
def test_dumped_predictions(truth, ranked, zeroshot):
    """What qaclip history reads of a run's predictions/<case>/ (retrieval jsonl, or one zero-shot json)."""
    from qaclip_harness.report.ranks import read_predictions

    with folder() as d:
        case = d / "case"
        case.mkdir()
        if zeroshot:
            (case / "cifar-10.json").write_bytes(ranked[0])
        else:
            rows = json.loads(truth[0]) if _is_json(truth[0]) else None
            lines = b"\n".join(json.dumps(r).encode() for r in rows) if isinstance(rows, list) else truth[0]
            (case / "test_texts.tr.jsonl").write_bytes(lines.replace(b'"text_id"', b'"image_id"', 1))
            (case / "test_predictions.jsonl").write_bytes(ranked[0].replace(b"}, {", b"}\n{"))
        holds("dumped predictions", lambda: read_predictions(case), QAClipError, [str(case)], d)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


@fuzz(40)
@given(json_bytes(st.fixed_dictionaries({"archive": st.sampled_from(["OFA-Sys/chinese-clip-eval/MUGE.zip", "x"])})))
def test_origin_record(example):
    """.qaclip-origin.json of a downloaded dataset: a bad one says nothing (no build known), never an error."""
    from qaclip_harness.data.catalog import ORIGIN_FILE, get_dataset, identify_build, read_origin

    data, _ = example
    with folder() as d:
        (d / ORIGIN_FILE).write_bytes(data)
        holds(
            "origin record", lambda: identify_build(get_dataset("muge"), d, None), (), [], d, lambda _: read_origin(d)
        )


# ------------------------------------------------------------------------------------------------
# the cache's records: a bad record is a miss (a warning may say so), never an error


@st.composite
def feature_records(draw):
    return {
        "key": "KEY",
        "run": draw(st.text(max_size=20)),
        "date": "2026-01-01T00:00:00Z",
        "what": "image features",
        "bytes": draw(st.integers(0, 10**6)),
        "fields": {"model": draw(NAMES)},
    }


@fuzz(60)
@given(json_bytes(feature_records()))
def test_feature_cache_record(example):
    import numpy as np

    from qaclip_harness.cache.features import FeatureStore
    from qaclip_harness.cache.keys import make_key

    data, _ = example
    fields = {"what": "fuzz", "n": 1}
    key = make_key(fields)
    with folder() as d:
        FeatureStore(d, "use", run="fuzz").save(fields, {"features": np.zeros((2, 3), np.float32)}, "fuzz")
        store = FeatureStore(d, "read-only", run="fuzz")
        (store.folder / f"{key}.json").write_bytes(data.replace(b"KEY", key.encode()))

        def use(found):
            arrays, why = found  # a fuzzed record lacks the payload's digest: never a hit
            assert arrays is None and isinstance(why, str)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            holds("cache records (features)", lambda: store.lookup(fields), (), [], d, use)


@fuzz(40)
@given(
    json_bytes(
        st.fixed_dictionaries({"key": st.just("KEY"), "items": st.just("ITEMS"), "shape": st.just([2, 4, 4, 3])})
    )
)
def test_pixel_cache_record(example):
    import numpy as np

    from qaclip_harness.cache.keys import make_key
    from qaclip_harness.cache.pixels import PixelStore, keys_digest

    data, _ = example
    store_fields = PixelStore.fields("f" * 64, 4, {"resize": "bicubic"}, "10.0")
    items = [1, 2]
    with folder() as d:
        store = PixelStore(d, reads=True, writes=False)
        entry = store.folder / make_key(store_fields)
        entry.mkdir(parents=True)
        np.save(entry / "pixels.npy", np.zeros((2, 4, 4, 3), dtype=np.uint8))
        (entry / "meta.json").write_bytes(
            data.replace(b"KEY", make_key(store_fields).encode()).replace(b"ITEMS", keys_digest(items).encode())
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            holds("cache records (pixels)", lambda: store.open(store_fields, items), (), [], d)


@fuzz(40)
@given(json_bytes(st.fixed_dictionaries({"signature": st.just("SIG"), "images": st.text(max_size=10)})))
def test_identity_record(example):
    from qaclip_harness.cache.identity import IdentityRecords, signature

    data, _ = example
    with folder() as d:
        image = d / "a.png"
        image.write_bytes(b"png")
        sig = signature("fuzz", [image])
        records = IdentityRecords(d / "cache", verify=False, writes=False)
        (d / "cache" / "identity").mkdir(parents=True)
        (d / "cache" / "identity" / f"{sig}.json").write_bytes(data.replace(b"SIG", sig.encode()))
        result = holds(
            "cache records (identity)", lambda: records.images_digest("fuzz", [image], lambda: "computed"), (), [], d
        )
        assert isinstance(result, str)
