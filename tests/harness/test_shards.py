"""Exact selection (--select-models, --select-datasets) and --shard K/N, as the suite collects them.

Each check collects the real suite (``pytest benchmarks --collect-only``) in one subprocess that runs
pytest several times and prints, per run, its exit code, the selected items' report names and the
shard record the run would write into report.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import contextlib, io, json, os, sys
import pytest

runs = json.loads(sys.argv[1])
out = []
for args, env in runs:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from qaclip_harness.pytest_plugin import plugin
    from qaclip_harness.suite.cases import report_identity
    from qaclip_harness.suite.selection import case_name

    class Probe:
        items, record = [], None

        def pytest_collection_finish(self, session):
            self.items = [
                [i.nodeid, case_name(report_identity(i)) if report_identity(i) else None,
                 report_identity(i)["model"] if report_identity(i) else None]
                for i in session.items
            ]
            plan = session.config.stash.get(plugin._PLAN_KEY, None)
            self.record = plan.record if plan is not None else None

    probe = Probe()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "benchmarks", *args], plugins=[probe])
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out.append({"code": int(code), "items": probe.items, "record": probe.record, "stderr": err.getvalue()})
print("PROBE " + json.dumps(out))
"""


def collect(*runs: tuple[list[str], dict[str, str]]) -> list[dict]:
    """Collect the suite once per (args, env) in one subprocess; per run its exit code, items and shard record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([list(r) for r in runs])],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[len("PROBE ") :])


ALL = ["--cpu-large-throughput", "--cpu-peer-throughput"]  # every case, as on a GPU runner


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return collect(
        (ALL, {}),  # 0: everything
        (["--select-models", "fixture-tiny"], {}),  # 1
        (["-k", "fixture-tiny"], {}),  # 2: the trap
        (["--select-datasets", "fixture-shapes"], {}),  # 3
        (["--select-models", "ViT-B-16,fixture-tiny-rn", "--select-datasets", "fixture-shapes,flickr30k-cn"], {}),  # 4
        ([], {"QACLIP_SELECT_MODELS": "fixture-tiny"}),  # 5: the variable
        *(([*ALL, "--shard", f"{k}/3"], {}) for k in (1, 2, 3)),  # 6, 7, 8
        *(([*ALL, "--shard", f"{k}/2"], {}) for k in (1, 2)),  # 9, 10
        ([*ALL, "--shard", "1/1"], {}),  # 11
    )


def _names(run: dict) -> list[str]:
    return [name for _, name, _ in run["items"] if name is not None]


def test_case_names_are_unique(runs):
    """The report name of every suite case (what a shard record and merge-reports count) names one case."""
    names = _names(runs[0])
    assert len(names) > 250
    assert len(names) == len(set(names))


def test_select_models_is_exact(runs):
    """--select-models fixture-tiny: its cases (reproduction and gates), never fixture-tiny-rn's as -k does."""
    exact, trap = runs[1], runs[2]
    assert exact["code"] == 0
    models = {name.rsplit("-fixture-tiny", 1)[-1] for name in _names(exact)}
    assert models == {""}, _names(exact)  # every name ends with the model's name: fixture-tiny itself
    assert "fixture-shapes-fixture-tiny" in _names(exact) and "parity-fixture-tiny" in _names(exact)
    assert all(nodeid for nodeid, name, _ in exact["items"] if name is not None)
    assert not [n for n, name, _ in exact["items"] if name is None]  # no throughput case: not a card's case
    assert any("fixture-tiny-rn" in n for n, _, _ in trap["items"])  # what -k does
    assert set(_names(exact)) < set(_names(trap))
    assert _names(runs[5]) == _names(exact)  # QACLIP_SELECT_MODELS is its twin


def test_select_datasets_and_both(runs):
    """--select-datasets keeps the reproduction cases of exactly those datasets; with --select-models, both hold."""
    ds = runs[3]
    assert ds["code"] == 0
    assert _names(ds) and all(n.startswith("fixture-shapes-") for n in _names(ds))
    assert not any(n.startswith("fixture-shapes-cls") for n in _names(ds))  # -k fixture-shapes would take them
    both = set(_names(runs[4]))
    # the alias ViT-B-16 is the card qa-clip-vit-b-16
    assert both == {
        "fixture-shapes-fixture-tiny-rn",
        "flickr30k-cn-qa-clip-vit-b-16",
    }, both


@pytest.mark.parametrize(
    "args, env, says",
    [
        (
            ["--select-models", "fixture-tiny,fixture-tin"],
            {},
            "--select-models 'fixture-tiny,fixture-tin': unknown model 'fixture-tin'; known models: ",
        ),
        (
            [],
            {"QACLIP_SELECT_DATASETS": "flickr30k"},
            "QACLIP_SELECT_DATASETS 'flickr30k': unknown dataset 'flickr30k'; known datasets: ",
        ),
        (["--select-models", " , "], {}, "--select-models ' , ': expected one or more model names"),
        (["--shard", "0/3"], {}, "--shard '0/3': expected K/N with K from 1 to N (3), counted from 1"),
        (["--shard", "4/3"], {}, "--shard '4/3': expected K/N with K from 1 to N (3)"),
        (["--shard", "2"], {}, "--shard '2': expected K/N"),
        ([], {"QACLIP_SHARD": "1/0"}, "QACLIP_SHARD '1/0': expected K/N with N at least 1"),
        (["--shard", "1/2", "--shard-durations", "no-such.json"], {}, "--shard-durations 'no-such.json': cannot read"),
        (["--shard-durations", "x.json"], {}, "--shard-durations 'x.json': applies to --shard K/N only"),
    ],
)
def test_bad_selection_and_shard_are_one_line_at_configure(args, env, says):
    """A bad name or K/N stops the run at configure time (exit 4), in one line naming the option or variable."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [f"ERROR: {lines[0][len('ERROR: ') :]}"] and says in lines[0], proc.stderr
    if "known" in says:
        assert "fixture-tiny" in lines[0] or "fixture-shapes" in lines[0]  # the known names are listed


def _by_shard(runs: list[dict]) -> list[list[list]]:
    return [r["items"] for r in runs]


@pytest.mark.parametrize("first, count", [(6, 3), (9, 2), (11, 1)])
def test_shards_partition_the_selection_by_model(runs, first, count):
    """N shards: every item of the full run on exactly one shard, a model's cases all on one, the same split seen by each."""
    everything = [nodeid for nodeid, _, _ in runs[0]["items"]]
    shards = runs[first : first + count]
    assert all(r["code"] == 0 for r in shards)
    seen = [nodeid for r in shards for nodeid, _, _ in r["items"]]
    assert sorted(seen) == sorted(everything)  # each once: none lost, none twice
    owner: dict[str, int] = {}
    for k, r in enumerate(shards):
        for _, _, model in r["items"]:
            if model is not None:  # the model card of the case's report row, read independently of the split
                assert owner.setdefault(model, k) == k, f"{model} is on shards {owner[model] + 1} and {k + 1}"
        rec = r["record"]
        assert (rec["index"], rec["count"]) == (k + 1, count)
        assert rec["selection"] == sorted(_names(runs[0]))  # every shard records the whole selection
        assert sorted(rec["cases"]) == sorted(_names(r))
        assert rec["estimated_cost"] == shards[0]["record"]["estimated_cost"]  # computed alike on every shard
        assert rec["expected_sha256"] == shards[0]["record"]["expected_sha256"]
    if count > 1:
        cost = shards[0]["record"]["estimated_cost"]
        assert max(cost) <= 1.5 * min(cost), cost  # balanced (the largest model is far below a third of the sweep)


def test_split_is_deterministic_and_follows_durations(tmp_path):
    """Same selection and N: the same split in another process; an earlier run's durations move a model."""
    heavy = {
        "results": [
            {
                "dataset": "fixture-shapes",
                "model": "fixture-tiny",
                "kind": "retrieval",
                "status": "passed",
                "seconds": 9e5,
            }
        ]
    }
    (tmp_path / "report.json").write_text(json.dumps(heavy), encoding="utf-8")
    args = [*ALL, "--shard", "1/3"]
    again, durations = collect((args, {}), ([*args, "--shard-durations", str(tmp_path)], {}))
    first = collect((args, {}))[0]
    assert again["items"] == first["items"]
    rec = durations["record"]
    assert rec["durations"] == str(tmp_path)
    # the estimate puts fixture-tiny elsewhere; measured as the heaviest model, it is placed first: on shard 1,
    # whose cost it dominates, while the other shards share the rest
    assert not any(model == "fixture-tiny" for _, _, model in again["items"])
    assert any(model == "fixture-tiny" for _, _, model in durations["items"])
    assert rec["estimated_cost"][0] >= 9e5 and all(0 < c < 9e5 for c in rec["estimated_cost"][1:])
