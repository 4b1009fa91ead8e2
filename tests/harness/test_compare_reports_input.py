"""compare-reports validates each report against its schema: a bad one is one line naming the file and the key."""

from __future__ import annotations

import copy
import json

import pytest

from qaclip_harness.cli import commands as cli

GOOD = {
    "meta": {"precision": "fp32", "device": "cpu"},
    "environment": {"torch": "2.14.1", "numerics": {"tf32_matmul": False}},
    "results": [
        {
            "dataset": "muge",
            "model": "qa-clip-rn50",
            "status": "passed",
            "measured": {"t2i_r1": 50.0},
            "provenance": {"build": "a"},
        }
    ],
}


def _edit(fn):
    doc = copy.deepcopy(GOOD)
    fn(doc)
    return doc


BAD = [
    ("results hold a number", lambda d: d["results"].append(5), r"results\[1\]: 5 is not of type 'object'"),
    ("dataset missing", lambda d: d["results"][0].pop("dataset"), r"results\[0\]: 'dataset' is a required property"),
    ("meta is a list", lambda d: d.update(meta=[1, 2]), r"meta: \[1, 2\] is not of type 'object'"),
    (
        "measured is a list",
        lambda d: d["results"][0].update(measured=[50.0]),
        r"results\[0\]\.measured: .* not of type 'object'",
    ),
    (
        "dataset is a list",
        lambda d: d["results"][0].update(dataset=["muge"]),
        r"results\[0\]\.dataset: .* not of type 'string'",
    ),
    (
        "environment is a string",
        lambda d: d.update(environment="torch 2.14"),
        r"environment: 'torch 2.14' is not of type 'object'",
    ),
    (
        "provenance is a string",
        lambda d: d["results"][0].update(provenance="build a"),
        r"results\[0\]\.provenance: .* 'object'",
    ),
    (
        "a metric is text",
        lambda d: d["results"][0]["measured"].update(t2i_r1="fifty"),
        r"results\[0\]\.measured\.t2i_r1: 'fifty'",
    ),
    ("no results", lambda d: d.pop("results"), r"the top level: 'results' is a required property"),
]


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("name, edit, needle", BAD, ids=[b[0] for b in BAD])
def test_a_malformed_report_is_named_by_file_and_key(tmp_path, capsys, name, edit, needle, as_json):
    good, bad = tmp_path / "a.json", tmp_path / "b.json"
    good.write_text(json.dumps(GOOD), encoding="utf-8")
    bad.write_text(json.dumps(_edit(edit)), encoding="utf-8")
    code = cli.main(["compare-reports", str(good), str(bad), *(["--json"] if as_json else [])])
    out = capsys.readouterr()
    assert code == 2, out.out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert str(bad) in lines[0] and __import__("re").search(needle, lines[0]), lines[0]


def test_a_valid_report_still_compares(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(GOOD), encoding="utf-8")
    b.write_text(json.dumps(_edit(lambda d: d["results"][0]["measured"].update(t2i_r1=51.0))), encoding="utf-8")
    assert cli.main(["compare-reports", str(a), str(b), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["cases"][0]["metrics"] == [["t2i_r1", 50.0, 51.0]]
