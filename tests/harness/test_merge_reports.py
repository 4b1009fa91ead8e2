"""qaclip merge-reports: the fixture selection run as 1 shard and as 2 and 3 shards merged gives the same cases,
numbers and verdicts; a missing shard, a duplicated one and shards of other selections, commits or tolerance files
are each refused by name."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qaclip_harness.cli.commands import main
from qaclip_harness.report.merge import MergeError, merge, merged_benchmarks, problems, read_shard

REPO = Path(__file__).resolve().parents[2]
# the fixture's four model cards on its two datasets: 8 reproduction cases, 4 models to spread
SELECTION = (
    "-m",
    "not throughput",
    "--select-models",
    "fixture-tiny,fixture-tiny-rn,hf-fixture-tiny,hf-fixture-tiny-processor",
    "--select-datasets",
    "fixture-shapes,fixture-shapes-cls",
)


def _suite(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    full_env.update(env)
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full_env, timeout=900, check=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The selection as shard 1/1, as 2 shards and as 3 shards (every run computes its features: --no-cache)."""
    root = tmp_path_factory.mktemp("shards")
    env = {"HF_HUB_OFFLINE": "1", "QACLIP_CACHE": str(root / "cache")}
    out: dict[str, list[Path]] = {}
    for n in (1, 2, 3):
        out[str(n)] = []
        for k in range(1, n + 1):
            folder = root / f"n{n}-k{k}"
            run = _suite(
                *SELECTION,
                "--no-cache",
                "--shard",
                f"{k}/{n}",
                "--report",
                str(folder),
                "--junitxml",
                str(folder / "junit.xml"),
                env=env,
            )
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
            assert f"qaclip: shard {k}/{n}: " in run.stdout
            out[str(n)].append(folder)
    return out


def _verdicts(doc: dict) -> dict[str, tuple]:
    """Every case's status, measured numbers and checks (metric, measured, expected, delta, tolerance, ok)."""
    out = {}
    for r in doc["results"]:
        checks = tuple(
            (c["metric"], c.get("measured"), c.get("expected"), c.get("delta"), c.get("tolerance"), c.get("ok"))
            for c in r["checks"]
        )
        name = f"{r['dataset']}-{r['model']}"
        assert name not in out
        out[name] = (r["status"], r["reason"], json.dumps(r["measured"], sort_keys=True), checks, r["counts"])
    return out


def test_merged_shards_equal_the_single_run_in_every_case(shards, tmp_path):
    single = tmp_path / "single"
    assert main(["merge-reports", str(shards["1"][0]), "--out", str(single)]) == 0
    one = json.loads((single / "report.json").read_text(encoding="utf-8"))
    assert len(one["results"]) == 8 and {r["status"] for r in one["results"]} == {
        "passed",
        "reported",
    }  # processor: report-only
    for n in ("2", "3"):
        parts = [json.loads((f / "report.json").read_text(encoding="utf-8")) for f in shards[n]]
        assert all(p["results"] for p in parts)  # four models over three shards: none left empty
        assert all(len(p["meta"]["shard"]["selection"]) == 8 for p in parts)
        merged = tmp_path / f"merged-{n}"
        assert main(["merge-reports", *map(str, shards[n]), "--out", str(merged)]) == 0
        doc = json.loads((merged / "report.json").read_text(encoding="utf-8"))
        assert _verdicts(doc) == _verdicts(one), n  # every case, every number, every verdict
        assert doc["meta"]["selection"] == one["meta"]["selection"]
        assert [m["shard"] for m in doc["meta"]["merged_from"]] == [f"{k}/{n}" for k in range(1, int(n) + 1)]
        for name in ("report.md", "report.html", "junit.xml"):
            assert (merged / name).is_file(), name
        cases = [tc.get("name") for tc in ET.parse(merged / "junit.xml").getroot().iter("testcase")]
        assert len(cases) == 8 and len(set(cases)) == 8
        assert ET.parse(merged / "junit.xml").getroot().get("tests") == "8"
        html = (merged / "report.html").read_text(encoding="utf-8")
        assert html.count('class="case"') == (single / "report.html").read_text(encoding="utf-8").count('class="case"')


def _errors(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["merge-reports", *argv]) == 2
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line]


def test_a_missing_shard_is_refused_naming_its_cases(shards, tmp_path, capsys):
    three = shards["3"]
    missing = json.loads((three[2] / "report.json").read_text(encoding="utf-8"))["meta"]["shard"]["cases"]
    (line,) = _errors(capsys, str(three[0]), str(three[1]), "--out", str(tmp_path / "m"))
    assert line.startswith(f"error: {len(missing)} case(s) of the selection ran nowhere (shard(s) 3/3 not given): ")
    assert all(name in line for name in missing)
    assert not (tmp_path / "m" / "report.json").exists()  # nothing written


def test_a_duplicated_shard_is_refused_naming_its_cases(shards, tmp_path, capsys):
    three = shards["3"]
    copy_of_2 = tmp_path / "copy-of-2"
    shutil.copytree(three[1], copy_of_2)
    twice = json.loads((three[1] / "report.json").read_text(encoding="utf-8"))["meta"]["shard"]["cases"]
    lines = _errors(capsys, *map(str, three), str(copy_of_2), "--out", str(tmp_path / "m"))
    assert lines[0] == f"error: shard 2/3 given twice: {three[1]}, {copy_of_2}"
    assert lines[1].startswith(f"error: {len(twice)} case(s) ran twice: ")
    assert all(f"{name} (in {three[1]}, {copy_of_2})" in lines[1] for name in twice)
    assert len(lines) == 2


def _edited(folder: Path, target: Path, edit) -> Path:
    shutil.copytree(folder, target)
    doc = json.loads((target / "report.json").read_text(encoding="utf-8"))
    edit(doc)
    (target / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    return target


def test_shards_of_other_selections_commits_or_tolerances_are_refused(shards, tmp_path, capsys):
    a, b = shards["2"]
    lines = _errors(capsys, str(a), str(shards["3"][1]), "--out", str(tmp_path / "m"))
    assert lines[0].startswith("error: shards of different shard counts: ")

    def other_selection(doc):
        doc["meta"]["shard"]["selection"].append("muge-fixture-tiny")
        doc["meta"]["shard"]["selection_sha256"] = "0" * 64

    lines = _errors(capsys, str(a), str(_edited(b, tmp_path / "sel", other_selection)), "--out", str(tmp_path / "m"))
    assert lines == [
        f"error: shards of different selections: only in {a}: none; only in {tmp_path / 'sel'}: muge-fixture-tiny"
    ]

    def other_commit(doc):
        doc["environment"]["git"] = {"commit": "f" * 40, "dirty": False}

    lines = _errors(capsys, str(a), str(_edited(b, tmp_path / "git", other_commit)), "--out", str(tmp_path / "m"))
    assert lines[0].startswith("error: shards of different commits: ") and "f" * 40 in lines[0]

    def other_tolerances(doc):
        doc["meta"]["shard"]["expected_sha256"] = "e" * 64

    lines = _errors(capsys, str(a), str(_edited(b, tmp_path / "tol", other_tolerances)), "--out", str(tmp_path / "m"))
    assert lines[0].startswith("error: shards of different tolerance files (expected_sha256): ")

    def not_a_shard(doc):
        del doc["meta"]["shard"]

    lines = _errors(capsys, str(a), str(_edited(b, tmp_path / "plain", not_a_shard)), "--out", str(tmp_path / "m"))
    assert lines == [
        f"error: {tmp_path / 'plain' / 'report.json'}: no meta.shard record: not a shard's report (run each shard with --shard K/N)"
    ]


def test_an_empty_shard_passes_and_reports_its_part(tmp_path):
    """More shards than models: the empty shard exits 0 and writes a report holding the selection and no case."""
    run = _suite(
        "--select-models",
        "fixture-tiny",
        "--select-datasets",
        "fixture-shapes",
        "--shard",
        "2/2",
        "--report",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "1", "QACLIP_CACHE": str(tmp_path / "cache")},
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "the split left this shard nothing to run" in run.stdout
    doc = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert doc["results"] == [] and doc["meta"]["shard"]["selection"] == ["fixture-shapes-fixture-tiny"]


def _bench(node: str, *names: str) -> dict:
    return {
        "machine_info": {"node": node, "cpu": {"brand_raw": "cpu"}},
        "benchmarks": [
            {"name": n, "fullname": n, "group": "g", "stats": {"mean": 0.5}, "extra_info": {}} for n in names
        ],
    }


def test_throughput_records_merge_by_machine(shards, tmp_path):
    """Two shards on one machine: one document of both; another machine: its own; a record twice on one: refused."""
    folders = []
    for k, folder in enumerate(shards["3"]):
        target = tmp_path / f"s{k}"
        shutil.copytree(folder, target)
        folders.append(target)
    (folders[0] / "benchmark.json").write_text(json.dumps(_bench("gpu-a", "t1", "t2")), encoding="utf-8")
    (folders[1] / "benchmark.json").write_text(json.dumps(_bench("gpu-a", "t3")), encoding="utf-8")
    (folders[2] / "benchmark.json").write_text(json.dumps(_bench("gpu-b", "t1")), encoding="utf-8")
    runs = [read_shard(f) for f in folders]
    docs = merged_benchmarks(runs)
    assert {m: [b["name"] for b in d["benchmarks"]] for m, d in docs.items()} == {
        "gpu-a | cpu": ["t1", "t2", "t3"],
        "gpu-b | cpu": ["t1"],
    }
    assert problems(runs) == []
    _, paths = merge(folders, tmp_path / "out")
    assert sorted(p.name for p in paths if p.name.startswith("benchmark-")) == [
        "benchmark-gpu-a-cpu.json",
        "benchmark-gpu-b-cpu.json",
    ]
    assert 'data-impl="qaclip_core"' in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    doc = copy.deepcopy(_bench("gpu-a", "t3"))
    (folders[2] / "benchmark.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(MergeError) as e:
        merge(folders, tmp_path / "out2")
    twice = f"t3 on gpu-a | cpu (in {folders[1] / 'benchmark.json'}, {folders[2] / 'benchmark.json'})"
    assert e.value.lines == [f"1 throughput record(s) twice on one machine: {twice}"]
