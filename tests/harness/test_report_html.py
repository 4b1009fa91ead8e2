"""report.html as a user meets it: written by a fixture run beside report.md, its numbers read back equal to
report.json, every case present, self-contained, plots (or a line saying how to get them), and rendered by a
real headless Chromium without errors and without a network request."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qaclip_harness.report.html import render_html
from qaclip_harness.report.throughput import records
from qaclip_harness.suite.options import env_flag
from tests.conftest import require_reference

from .report_page import Element, parse

REPO = Path(__file__).resolve().parents[2]
ACCURACY = ("retrieval", "zeroshot")
# the fixture's two datasets, the parity gate (against cn_clip), the golden gate (skips: no --golden-dir) and two
# throughput records of one group (ours and the reference), timed briefly
SELECTION = (
    "fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny or (test_checkpoint_gate and parity-fixture-tiny) "
    "or golden-fixture-tiny or (test_encode_text and fixture-fp32-b1- and (qaclip_core or cn_clip) and not compile)"
)
RED = "#c62828"
BASELINE = REPO / "benchmarks" / "results" / "cpu-2core-fp32.json"  # holds the same fixture records: the compared run


def _needs_plots() -> None:
    pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install 'qaclip-core[report]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One fixture run of the suite with --report and --benchmark-json (offline, as on an air-gapped runner)."""
    require_reference()  # its parity case compares with cn_clip, and the page's numbers include its drifts
    out_dir = tmp_path_factory.mktemp("run") / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    # a first run on a fresh runner: the history folder does not exist yet; the job summary is a file
    env.update(
        HF_HUB_OFFLINE="1",
        QACLIP_CACHE=str(out_dir.parent / "cache"),
        QACLIP_HISTORY=str(out_dir.parent / "history"),
        GITHUB_STEP_SUMMARY=str(out_dir.parent / "summary.md"),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            SELECTION,
            "--report",
            str(out_dir),
            "--benchmark-json",
            str(out_dir / "benchmark.json"),
            f"--benchmark-compare={BASELINE}",
            "--benchmark-max-time=0.05",
            "--benchmark-min-rounds=3",
            "--benchmark-warmup=off",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"report written to {out_dir / 'report.html'}" in out.stdout
    return out_dir


def _doc(run: Path) -> dict:
    return json.loads((run / "report.json").read_text(encoding="utf-8"))


def _row(page: Element, r: dict) -> Element:
    found = [
        e
        for e in page.find_all("tr", cls="case", data_dataset=r["dataset"], data_model=r["model"])
        if e.attrs.get("data-variant", "") == (r.get("variant") or "")
    ]
    assert len(found) == 1, f"{r['dataset']}-{r['model']}: {len(found)} table rows"
    return found[0]


def _shown(r: dict, c: dict) -> str:
    """The cell a seed-style table shows, written out independently of the renderer."""
    flag = "" if c["ok"] else "!"
    if "cell" in c:
        return c["cell"] + flag
    if r["kind"] == "parity":
        return f"{c['measured']:{c.get('format') or '.1e'}}{flag}"
    spec = c.get("format") or ".1f"
    return f"{c['measured']:{spec}} ({c['delta']:+{spec}}){flag}"


def check_numbers(page: Element, doc: dict) -> int:
    """Every case's numbers in the page equal report.json's (the exact value and the shown one); returns how many."""
    seen = 0
    for r in doc["results"]:
        row = _row(page, r)
        assert row.attrs["data-status"] == r["status"]
        (details,) = page.find_all("details", cls="case-details", data_dataset=r["dataset"], data_model=r["model"])
        for c in r["checks"]:
            if not isinstance(c["measured"], (int, float)):
                continue
            (cell,) = row.find_all("td", data_metric=c["metric"])
            assert json.loads(cell.attrs["data-measured"]) == c["measured"]  # exactly, not rounded
            assert cell.text == _shown(r, c)
            assert ("out" in cell.classes) == (not c["ok"]), f"{r['dataset']}-{r['model']} {c['metric']}"
            for key in ("expected", "delta", "tolerance"):
                if c.get(key) is not None and r["kind"] in ACCURACY:
                    assert json.loads(cell.attrs[f"data-{key}"]) == c[key]
            (full,) = details.find_all("tr", cls="check", data_metric=c["metric"])
            assert json.loads(full.attrs["data-measured"]) == c["measured"]
            seen += 1
        for metric, value in r["measured"].items():
            (full,) = details.find_all("tr", cls="measured", data_metric=metric)
            assert json.loads(full.attrs["data-measured"]) == value
    return seen


def test_numbers_in_the_page_equal_report_json(run):
    doc = _doc(run)
    page = parse((run / "report.html").read_text(encoding="utf-8"))
    kinds = {r["kind"] for r in doc["results"]}
    assert {"retrieval", "zeroshot", "parity", "golden"} <= kinds  # what the selection covers
    assert check_numbers(page, doc) >= 9 + 2 + 2  # recalls, top-1/5, the parity drifts at least


def test_every_case_is_present_once_with_its_provenance_and_skip_reason(run):
    doc = _doc(run)
    page = parse((run / "report.html").read_text(encoding="utf-8"))
    cases = {(e.attrs["data-dataset"], e.attrs["data-model"]) for e in page.find_all("details", cls="case-details")}
    assert cases == {(r["dataset"], r["model"]) for r in doc["results"]}
    assert len(page.find_all("details", cls="case-details")) == len(doc["results"])
    for r in doc["results"]:
        if r["checkpoint_sha256"]:
            (prov,) = page.find_all("tr", cls="provenance", data_dataset=r["dataset"], data_model=r["model"])
            assert [td.attrs["data-full"] for td in prov.find_all("td") if "data-full" in td.attrs] == [
                r["checkpoint_sha256"],
                r["data_fingerprint"],
            ]
            assert r["provenance"]["build"] in prov.text and "published size" in prov.text
    skipped = [r for r in doc["results"] if r["status"] == "skipped"]
    assert skipped, "the selection holds a case that skips (golden without --golden-dir)"
    section = page.by_id("skipped")
    for r in skipped:
        (row,) = section.find_all("tr", data_dataset=r["dataset"], data_model=r["model"])
        assert r["reason"] in row.text
    env = page.by_id("environment").text
    assert doc["environment"]["torch"] in env and doc["environment"]["git"]["commit"] in env


def test_the_run_s_throughput_and_its_baseline_are_in_the_page(run):
    bench = json.loads((run / "benchmark.json").read_text(encoding="utf-8"))
    page = parse((run / "report.html").read_text(encoding="utf-8"))
    recs = records(bench)
    assert {r.impl for r in recs} == {"qaclip_core", "cn_clip"}
    for rec in recs:
        (row,) = page.find_all("tr", cls="bench", data_group=rec.group, data_impl=rec.impl)
        assert json.loads(row.attrs["data-per-s"]) == rec.per_s
    ours = page.find_all("tr", cls="bench", data_impl="qaclip_core")[0]
    assert "cn_clip " in ours.text and "x" in ours.text  # the ratio over the reference
    # --benchmark-compare: each record against the baseline file's record of the same test
    base = {r.fullname: r.per_s for r in records(json.loads(BASELINE.read_text(encoding="utf-8")))}
    for rec in recs:
        (row,) = page.find_all("tr", cls="bench", data_group=rec.group, data_impl=rec.impl)
        assert json.loads(row.attrs["data-baseline"]) == base[rec.fullname]


def test_the_page_has_its_plots_and_needs_nothing_from_outside(run):
    _needs_plots()
    text = (run / "report.html").read_text(encoding="utf-8")
    page = parse(text)
    datasets = page.by_id("datasets").find_all("section", cls="dataset")
    assert len(datasets) == 2 and all(s.find_all("svg") for s in datasets)  # a tolerance plot per dataset
    assert page.by_id("gates").find_all("svg"), "the gates' drift plot"
    assert page.by_id("throughput").find_all("svg")
    # self-contained: no script, stylesheet, frame or image file, no link out of the page, no web font
    assert not page.find_all("script") and not page.find_all("link") and not page.find_all("iframe")
    assert not page.find_all("img") and not page.find_all("object")
    for e in page.iter():
        for name in ("href", "src", "xlink:href"):
            assert e.attrs.get(name, "#").startswith("#"), f"<{e.tag} {name}={e.attrs[name]!r}>"
    assert "@import" not in text and "@font-face" not in text and "url(http" not in text
    ids = [e.attrs["id"] for e in page.iter() if "id" in e.attrs]
    assert len(ids) == len(set(ids)), "ids repeat across figures"


def test_a_failure_stands_out(run):
    _needs_plots()
    doc = copy.deepcopy(_doc(run))
    r = next(r for r in doc["results"] if r["kind"] == "retrieval" and r["model"] == "fixture-tiny")
    c = r["checks"][0]
    c["measured"] += 3 * c["tolerance"]
    c["delta"], c["ok"], r["status"] = c["measured"] - c["expected"], False, "failed"
    page = parse(render_html(doc))
    (cell,) = _row(page, r).find_all("td", data_metric=c["metric"])
    assert "out" in cell.classes and cell.text.endswith("!")
    assert "outside tolerance: T2I R@1 +" in page.by_id("failures").text
    figure = page.by_id(f"ds-{r['dataset']}").find_all("svg")[0]
    assert any(RED in e.attrs.get("style", "") for e in figure.iter())  # drawn red
    clean = page.by_id("ds-fixture-shapes-cls").find_all("svg")[0]
    assert not any(RED in e.attrs.get("style", "") for e in clean.iter())
    check_numbers(page, doc)


def test_without_matplotlib_the_page_keeps_its_tables_and_says_how_to_get_plots(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    doc = _doc(run)
    page = parse(render_html(doc))
    assert not page.find_all("svg")
    notes = page.find_all(cls="plots-missing")
    assert notes and "the 'report' extra" in notes[0].text and "qaclip-core[report]" in notes[0].text
    check_numbers(page, doc)


def _browser() -> str:
    for name in (
        os.environ.get("QACLIP_BROWSER"),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ):
        if name and shutil.which(name):
            return shutil.which(name)
    return ""


def _page_requests(netlog: Path) -> list:
    """URLs the page itself asked for (the browser's own background requests have no page as their site)."""
    text = netlog.read_text(encoding="utf-8").rstrip().rstrip(",")
    doc = json.loads(text if text.endswith("}") else text + "]}")  # a log cut short at exit lacks its tail
    start = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in doc["events"]
        if e["type"] == start
        and "file://" in str(e["params"].get("network_isolation_key", ""))
        and not e["params"]["url"].startswith("file:")
    ]


def test_renders_in_headless_chromium_without_errors_or_network(run, tmp_path):
    """Needs Chromium (Debian/Ubuntu: apt-get install chromium; .ci/run installs it; QACLIP_BROWSER names another)."""
    exe = _browser()
    if not exe:
        why = (
            "needs a headless Chromium and found none (install it: apt-get install -y chromium, or set QACLIP_BROWSER "
            "to a Chromium or Chrome binary)"
        )
        if env_flag("QACLIP_REQUIRE_BROWSER"):  # CI installs it: there its absence is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    html = run / "report.html"
    netlog = tmp_path / "netlog.json"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--log-net-log={netlog}",
        "--dump-dom",
        html.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert _page_requests(netlog) == []
    dom = parse(out.stdout)
    source = parse(html.read_text(encoding="utf-8"))
    assert dom.find_all("h1")[0].text == "Reproduction report"
    assert len(dom.find_all("svg")) == len(source.find_all("svg"))  # every figure parsed into the page
    assert len(dom.find_all("details", cls="case-details")) == len(_doc(run)["results"])
    check_numbers(dom, _doc(run))  # the numbers as the browser's DOM holds them


def test_the_job_summary_gets_the_report_and_what_moved(run):
    """--history (here QACLIP_HISTORY, a folder not made yet: the first run) adds history.md to the job summary."""
    summary = (run.parent / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# Reproduction report") and "## What moved since the last run" in summary
    assert "one run (report" in (run / "history.md").read_text(encoding="utf-8")
    assert (
        "nothing to compare with yet" in parse((run / "report.html").read_text(encoding="utf-8")).by_id("history").text
    )


def test_elevater_datasets_share_one_grid_with_their_numbers():
    """The ten ELEVATER datasets are one Results.md-style grid (rows models, columns datasets), numbers read back."""
    _needs_plots()
    from dataclasses import asdict

    from qaclip_harness.report.tables import CaseResult

    results = []
    for dataset, delta in (("cifar-10", 0.3), ("cifar100", -0.9), ("dtd", 0.1)):
        for model in ("cn-clip-rn50", "qa-clip-rn50"):
            check = {
                "metric": "top1",
                "measured": 70.0 + delta,
                "expected": 70.0,
                "tolerance": 0.5,
                "delta": delta,
                "ok": abs(delta) <= 0.5,
            }
            results.append(
                CaseResult(
                    dataset=dataset,
                    model=model,
                    kind="zeroshot",
                    checks=[check],
                    status="passed" if check["ok"] else "failed",
                )
            )
    results.append(
        CaseResult(dataset="mnist", model="qa-clip-rn50", kind="zeroshot", status="skipped", reason="MNIST not found")
    )
    doc = {"results": [asdict(r) for r in results]}
    page = parse(render_html(doc))
    (grid,) = page.find_all("section", cls="grid")
    assert [th.text for th in grid.find_all("th")] == ["model", "CIFAR-10", "CIFAR-100", "DTD", "MNIST"]
    for r in doc["results"]:
        (cell,) = grid.find_all("td", cls="case", data_dataset=r["dataset"], data_model=r["model"])
        assert cell.attrs["data-status"] == r["status"]
        if r["checks"]:
            c = r["checks"][0]
            assert json.loads(cell.attrs["data-measured"]) == c["measured"]
            assert cell.text == f"{c['measured']:.1f} ({c['delta']:+.1f})" + ("" if c["ok"] else "!")
            assert ("out" in cell.classes) == (not c["ok"])
        else:
            assert cell.text == "skipped"
    assert "skipped (1): MNIST not found" in grid.text and grid.find_all("svg")
    assert len(page.find_all("details", cls="case-details")) == len(results)
