"""The history of every number: ``qaclip keep-run`` keeps runs, ``qaclip history`` names what moved since the run before
by how much of its tolerance, draws every number over the runs, and lists the queries that changed rank.

The runs here are written by the report writer itself (report.json) and from a real pytest-benchmark file
(benchmarks/results); tests/harness/test_history_runs.py (large) does the same over three real fixture runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from qaclip_harness.cli.commands import main
from qaclip_harness.report.history import build, keep_run, load_runs
from qaclip_harness.report.ranks import rank_changes
from qaclip_harness.report.tables import CaseResult, write_reports
from qaclip_harness.suite.reports import write_html_and_history

from .report_page import parse

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "results" / "cpu-2core-fp32.json"
SLOWED = "encode_image ViT-fixture@BERT-fixture fp32 b16 cpu"  # the group run 3 makes 20% slower


def _check(metric: str, measured: float, expected: float, tolerance: float) -> dict:
    delta = measured - expected
    return {
        "metric": metric,
        "measured": measured,
        "expected": expected,
        "tolerance": tolerance,
        "delta": delta,
        "ok": abs(delta) <= tolerance,
    }


def _results(t2i_r1: float, drift: float) -> list:
    retrieval = [_check("t2i_r1", t2i_r1, 95.0, 0.5), _check("i2t_r1", 96.0, 96.0, 0.5)]
    gate = [_check("image_max_abs_diff", drift, 0.0, 1e-5)]
    return [
        CaseResult(
            dataset="fixture-shapes",
            model="fixture-tiny",
            kind="retrieval",
            checks=retrieval,
            status="passed" if all(c["ok"] for c in retrieval) else "failed",
            checkpoint_sha256="ab" * 32,
        ),
        CaseResult(
            dataset="onnx-parity",
            model="fixture-tiny",
            kind="parity",
            checks=gate,
            status="passed" if gate[0]["ok"] else "failed",
        ),
    ]


def _bench(slower: float = 1.0) -> dict:
    doc = json.loads(BENCH.read_text(encoding="utf-8"))
    doc["benchmarks"] = [b for b in doc["benchmarks"] if "fixture" in b["group"]]  # fewer figures: a faster test
    for b in doc["benchmarks"]:
        if b["group"] == SLOWED and b["extra_info"]["impl"] == "qaclip_core":
            b["extra_info"]["items_per_s"] = round(b["extra_info"]["items_per_s"] / slower, 2)
    return doc


def _predictions(folder: Path, t2i: dict) -> Path:
    """A retrieval dump as qaclip eval writes it: text 1 -> image 10, text 2 -> image 20, text 3 -> image 30."""
    folder.mkdir(parents=True)
    (folder / "test_texts.tr.jsonl").write_text(
        "".join(json.dumps({"image_id": i, "text_ids": [i // 10]}) + "\n" for i in (10, 20, 30)), encoding="utf-8"
    )
    (folder / "test_predictions.jsonl").write_text(
        "".join(json.dumps({"text_id": t, "image_ids": ids}) + "\n" for t, ids in t2i.items()), encoding="utf-8"
    )
    (folder / "test_tr_predictions.jsonl").write_text(
        "".join(json.dumps({"image_id": i, "text_ids": [i // 10, 9]}) + "\n" for i in (10, 20, 30)), encoding="utf-8"
    )
    return folder


def _run(
    path: Path, time: str, t2i_r1: float = 95.1, drift: float = 1e-7, slower: float = 1.0, t2i: dict | None = None
) -> Path:
    write_reports(
        _results(t2i_r1, drift), path, meta={"time": time}, environment={"git": {"commit": "c0ffee" + time[-2:] * 17}}
    )
    (path / "benchmark.json").write_text(json.dumps(_bench(slower)), encoding="utf-8")
    if t2i is not None:
        _predictions(path / "predictions" / "fixture-shapes-fixture-tiny", t2i)
    return path


SAME = {1: [10, 20, 30], 2: [20, 10, 30], 3: [30, 10, 20]}
MOVED = {1: [10, 20, 30], 2: [10, 30, 20], 3: [30, 10, 20]}  # text 2: its image from rank 1 to 3


@pytest.fixture
def store(tmp_path) -> Path:
    """Two runs kept on main (the same numbers), and the current run (a pull request) with a deliberate change."""
    hist = tmp_path / "history"
    for n, name in ((1, "aaa"), (2, "bbb")):
        keep_run(_run(tmp_path / f"run{n}", f"2026-01-0{n}T00:00:0{n}", t2i=SAME), hist, name)
    _run(tmp_path / "current", "2026-01-03T00:00:03", t2i_r1=94.8, drift=2e-5, slower=1.25, t2i=MOVED)
    return hist


def test_history_names_what_moved_since_the_last_run_by_share_of_tolerance(store, capsys):
    current = store.parent / "current"
    assert main(["history", str(store), str(current), "--markdown", str(store.parent / "history.md")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 runs; now = current (c0ffee0), before = 20260102T000002-bbb (c0ffee0)")
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("status: ")] == [
        "status: onnx-parity / fixture-tiny: passed -> failed"
    ]
    t2i = next(line for line in lines if " t2i_r1 " in line).split()
    assert t2i[:2] == ["accuracy", "fixture-shapes"] and t2i[-6:] == ["95.10", "94.80", "-0.3", "60%", "of", "tol"]
    gate = next(line for line in lines if "image_max_abs_diff" in line)
    assert gate.startswith("gate") and gate.endswith("199% of tol !")  # (2e-5 - 1e-7) / 1e-5
    slowed = next(line for line in lines if SLOWED in line and " qaclip_core " in line)
    assert slowed.endswith("20% of before !")  # 1 - 1 / 1.25, beyond the 10% alert
    assert not any(" i2t_r1 " in line for line in lines)  # unchanged: not listed
    assert sum(line.startswith("throughput") for line in lines) == 1  # the file's other records are identical
    assert "fixture-shapes-fixture-tiny: 1 of 6 queries changed rank or first answer (0 better, 1 worse)" in lines
    assert "  t2i text 2: rank of the first correct image 1 -> 3 (first image 20 -> 10)" in lines
    md = (store.parent / "history.md").read_text(encoding="utf-8")
    assert "| accuracy | fixture-shapes / fixture-tiny | t2i_r1 | 95.10 | 94.80 | -0.3 | 60% of tol |" in md


def test_runs_with_the_same_numbers_move_nothing(store, capsys):
    assert main(["history", str(store)]) == 0
    out = capsys.readouterr().out
    assert out == (
        "2 runs; now = 20260102T000002-bbb (c0ffee0), before = 20260101T000001-aaa (c0ffee0): 0 numbers moved, "
        "0 cases changed status\nfixture-shapes-fixture-tiny: 0 of 6 queries changed rank or first answer "
        "(0 better, 0 worse)\n"
    )


def test_json_lists_every_moved_number(store, capsys):
    assert main(["history", str(store), str(store.parent / "current"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    moved = {(m["section"], m["number"]): m for m in doc["moved"]}
    assert moved["accuracy", "t2i_r1"]["before"] == 95.1 and moved["accuracy", "t2i_r1"]["after"] == 94.8
    assert moved["accuracy", "t2i_r1"]["share"] == pytest.approx(0.6)
    assert moved["throughput", "qaclip_core"]["alert"] is True
    assert [r["name"] for r in doc["runs"]] == ["20260101T000001-aaa", "20260102T000002-bbb", "current"]
    assert doc["rank_changes"][0]["changes"] == [
        {"direction": "t2i", "query": 2, "before_rank": 1, "after_rank": 3, "before_top": 20, "after_top": 10}
    ]


def test_the_page_draws_every_number_over_the_runs(store, tmp_path):
    pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install 'qaclip-core[report]'")
    current = store.parent / "current"
    assert main(["history", str(store), str(current), "--html", str(tmp_path / "page.html")]) == 0
    page = parse((tmp_path / "page.html").read_text(encoding="utf-8"))
    section = page.by_id("history")
    groups = {r["group"] for r in _bench()["benchmarks"]}
    # one figure per case (2) and per throughput group
    assert len(section.find_all("svg")) == 2 + len(groups)
    assert "t2i_r1" in section.text and "passed -> failed" in section.text
    # the run before is the current run's throughput baseline
    (row,) = page.find_all("tr", cls="bench", data_group=SLOWED, data_impl="qaclip_core")
    assert json.loads(row.attrs["data-per-s"]) / json.loads(row.attrs["data-baseline"]) == pytest.approx(0.8, abs=1e-3)


def test_a_suite_run_with_history_writes_its_page_and_history_md(store):
    current = store.parent / "current"
    warnings = []
    paths = write_html_and_history(current, _bench(1.25), _bench(), store, warnings.append)
    assert [p.name for p in paths] == ["report.html", "history.md"] and not warnings
    assert "t2i_r1" in (current / "history.md").read_text(encoding="utf-8")
    # a damaged history costs the history section, never the page
    (store / "20260102T000002-bbb" / "report.json").write_text("{not json", encoding="utf-8")
    (current / "history.md").unlink()
    paths = write_html_and_history(current, None, None, store, warnings.append)
    assert [p.name for p in paths] == ["report.html"] and not (current / "history.md").exists()
    assert len(warnings) == 1 and "20260102T000002-bbb/report.json" in warnings[0]
    assert 'id="history"' not in (current / "report.html").read_text(encoding="utf-8")


def test_keep_run_keeps_a_whole_run_once_and_prunes_the_oldest(tmp_path):
    hist = tmp_path / "history"
    kept = [
        keep_run(_run(tmp_path / f"r{n}", f"2026-02-0{n}T10:00:00"), hist, f"sha{n}", keep_last=2) for n in (1, 2, 3)
    ]
    assert [p.name for p in kept] == ["20260201T100000-sha1", "20260202T100000-sha2", "20260203T100000-sha3"]
    assert sorted(p.name for p in hist.iterdir()) == ["20260202T100000-sha2", "20260203T100000-sha3"]  # no temporaries
    assert sorted(p.name for p in kept[2].iterdir()) == ["benchmark.json", "report.json", "report.md"]
    with pytest.raises(Exception, match="exists already"):
        keep_run(tmp_path / "r3", hist, "sha3")
    (tmp_path / "empty").mkdir()
    assert main(["keep-run", str(tmp_path / "empty"), str(hist), "--name", "x"]) == 2


@pytest.mark.parametrize(
    "damage,needle",
    [
        (
            lambda run: (run / "report.json").write_text('{"results": 3}', encoding="utf-8"),
            "report.json is not a qaclip report.json",
        ),
        (
            lambda run: (run / "predictions" / "fixture-shapes-fixture-tiny" / "test_predictions.jsonl").write_text(
                '{"text_id": 1, "image_ids": [10]}\n{oops\n', encoding="utf-8"
            ),
            "test_predictions.jsonl, line 2: not JSON",
        ),
        (
            lambda run: (run / "predictions" / "fixture-shapes-fixture-tiny" / "test_predictions.jsonl").write_text(
                '{"text": 1}\n', encoding="utf-8"
            ),
            "a row has no 'text_id'",
        ),
    ],
    ids=["report-shape", "predictions-line", "predictions-field"],
)
def test_bad_input_is_one_error_naming_the_file(store, capsys, damage, needle):
    current = store.parent / "current"
    damage(current)
    assert main(["history", str(store), str(current)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0] and str(current) in err[0]


def test_a_folder_that_is_neither_a_run_nor_holds_runs(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x", encoding="utf-8")
    assert main(["history", str(tmp_path / "notes")]) == 2
    assert "holds no runs" in capsys.readouterr().err
    assert main(["history", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_zero_shot_predictions_name_the_images_whose_class_changed(tmp_path):
    def dump(folder: Path, rows: list) -> Path:
        folder.mkdir()
        (folder / "shapes-cls.json").write_text(
            json.dumps({"model_name": "m", "predictions": [rows]}), encoding="utf-8"
        )
        return folder

    before = dump(tmp_path / "a", [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    after = dump(tmp_path / "b", [[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    diff = rank_changes("shapes", before, after)
    assert diff.compared == 3 and [c.text() for c in diff.changes] == ["image 1: predicted class 1 -> 0"]


def test_a_store_s_runs_are_taken_oldest_first_whatever_their_names(tmp_path):
    hist = tmp_path / "h"
    for time, name in (("2026-03-02T00:00:00", "aaa"), ("2026-03-01T00:00:00", "zzz")):
        run = _run(tmp_path / name, time)
        keep_run(run, hist, name)
    runs = load_runs([hist])
    assert [r.name for r in runs] == ["20260301T000000-zzz", "20260302T000000-aaa"]
    history = build(copy.copy(runs))
    assert history.moves == [] and len(history.series) > 0


@pytest.mark.parametrize(
    "name,needle",
    [
        ("../../x", "path separators"),
        ("a/b", "path separators"),
        ("/abs/path", "path separators"),
        ("..", "only dots"),
        ("", "empty"),
        ("   ", "empty"),
        ("tab\there", "control characters"),
        ("esc\x1b[31m", "control characters"),
        ("x" * 201, "at most 200"),
    ],
)
def test_keep_run_refuses_a_name_that_is_not_one_folder_name(tmp_path, capsys, name, needle):
    """--name is one folder name: a path would keep the run outside the store or where history does not look."""
    run = _run(tmp_path / "run", "2026-04-01T00:00:00")
    store = tmp_path / "deep" / "er" / "store"
    with pytest.raises(SystemExit) as e:
        main(["keep-run", str(run), str(store), "--name", name])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --name" in err and needle in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()
    assert not store.exists() or list(store.iterdir()) == []
    with pytest.raises(Exception, match="--name"):  # the library call checks it too
        keep_run(run, store, name)
    assert not store.exists() or list(store.iterdir()) == []


def test_keep_run_store_that_is_a_file_or_inside_the_run(tmp_path, capsys):
    run = _run(tmp_path / "run", "2026-04-01T00:00:00")
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    for store in (tmp_path / "a-file", tmp_path / "a-file" / "under"):
        with pytest.raises(SystemExit) as e:
            main(["keep-run", str(run), str(store), "--name", "ok"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument STORE" in err and "a-file" in err and "is a file" in err
    assert main(["keep-run", str(run), str(run / "store"), "--name", "ok"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is inside the run" in err[0] and not (run / "store").exists()
    assert main(["keep-run", str(run), str(tmp_path / "store"), "--name", "中文 name-1.2"]) == 0
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["20260401T000000-中文 name-1.2"]


def test_history_html_that_is_a_folder_names_the_option(store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["history", str(store), "--html", str(store)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --html" in err and "is a folder" in err
