"""``qaclip history`` over three real fixture runs, the third with a deliberate change (seeded noise added to every image
feature of the native encoder, as a broken kernel would): the moved numbers, the cases that changed status and
the queries that changed rank are named; the two unchanged runs move nothing; and what it prints is the sample in
docs/reports.md. The runs are tools/history_example.py's (about a minute and a half on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import require_reference

from .report_page import parse

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install 'qaclip-core[report]'")
    require_reference()  # the runs hold the parity case, against cn_clip
    return _tool("history_example").make_history(tmp_path_factory.mktemp("history"))


def test_history_over_three_fixture_runs_names_the_deliberate_change(history, tmp_path):
    store, current = history
    qaclip = _tool("history_example").qaclip
    same = qaclip("history", str(store))
    assert same.returncode == 0, same.stderr
    assert ": 0 numbers moved, 0 cases changed status" in same.stdout.splitlines()[0]
    assert "fixture-shapes-fixture-tiny: 0 of " in same.stdout

    out = qaclip("history", str(store), str(current), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["name"][-5:] for r in doc["runs"]] == ["main1", "main2", "rrent"]
    assert {(c["case"], c["after"]) for c in doc["status_changes"]} == {
        ("fixture-shapes / fixture-tiny", "failed"),
        ("fixture-shapes-cls / fixture-tiny", "failed"),
        ("parity / fixture-tiny", "failed"),
    }
    moved = {(m["case"], m["number"]): m for m in doc["moved"]}
    assert moved["fixture-shapes-cls / fixture-tiny", "top1"]["share"] > 1  # beyond a whole tolerance
    assert moved["parity / fixture-tiny", "image max|Δ|"]["share"] > 100
    assert ("parity / fixture-tiny", "text max|Δ|") not in moved  # the text tower did not change
    (ranks,) = doc["rank_changes"]
    assert ranks["case"] == "fixture-shapes-fixture-tiny" and ranks["worse"] > 0 and len(ranks["changes"]) > 0

    text = qaclip("history", str(store), str(current), "--html", str(tmp_path / "page.html"))
    print(text.stdout)  # what the job summary shows, for the record (pytest -s)
    assert "status: parity / fixture-tiny: passed -> failed" in text.stdout
    page = parse((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert len(page.by_id("history").find_all("svg")) == 3  # the two datasets and the parity gate, over three runs


def test_the_history_sample_in_the_docs_is_what_it_prints(history):
    """docs/reports.md shows `python tools/history_example.py`; tests/harness/test_doc_samples.py leaves it to this
    test, which has the runs already (rewrite it with `python tools/doc_samples.py --only history_example`)."""
    store, current = history
    samples = _tool("doc_samples")
    (sample,) = [s for s in samples.samples() if s.command == "python tools/history_example.py"]
    out = _tool("history_example").qaclip("history", str(store), str(current))
    printed = out.stdout.rstrip("\n").split("\n")
    assert samples.matches(sample.lines, printed), (
        f"{sample.where}: the history sample is stale; it prints now:\n{out.stdout}"
    )
