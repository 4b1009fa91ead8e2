"""The ELEVATER cases: the published table in expected/, tolerances from the test-set sizes, ids that -k selects cleanly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from qaclip_harness.data.catalog import all_datasets
from qaclip_harness.expected import ExpectedFileError, load_expected

REPO = Path(__file__).resolve().parents[2]
ELEVATER = [c.name for c in all_datasets() if c.layout == "elevater"]
CN = ["cn-clip-rn50", "cn-clip-vit-b-16", "cn-clip-vit-l-14", "cn-clip-vit-l-14-336", "cn-clip-vit-h-14"]
QA = ["qa-clip-rn50", "qa-clip-vit-b-16", "qa-clip-vit-l-14"]
# Chinese-CLIP Results.md, zero-shot classification, the ten ELEVATER columns (a second copy of
# the table, typed from the source independently of expected/, so a slip in either shows)
PUBLISHED = {
    "cn-clip-rn50": [72.7, 40.6, 36.9, 27.0, 21.9, 5.4, 30.2, 50.2, 47.7, 82.1],
    "cn-clip-vit-b-16": [92.0, 64.4, 43.6, 46.9, 47.2, 12.8, 33.5, 67.6, 54.0, 83.3],
    "cn-clip-vit-l-14": [94.9, 75.1, 44.2, 56.9, 54.6, 16.0, 49.9, 69.8, 63.5, 84.5],
    "cn-clip-vit-l-14-336": [94.1, 73.5, 43.8, 50.7, 55.1, 17.1, 49.8, 65.0, 62.9, 84.9],
    "cn-clip-vit-h-14": [96.0, 79.7, 51.2, 52.0, 49.2, 26.2, 39.1, 79.4, 52.4, 84.9],
}
COLUMNS = [
    "cifar-10",
    "cifar100",
    "dtd",
    "eurosat",
    "fer-2013",
    "fgvc-aircraft",
    "kitti-distance",
    "mnist",
    "patch-camelyon",
    "voc-2007",
]
NOT_GATED = {"kitti-distance": "#77", "patch-camelyon": "#77", "voc-2007": "#104"}


def _cases():
    return [c for c in load_expected(REPO / "expected") if c.dataset in ELEVATER]


def test_the_published_table_is_in_expected_with_its_source():
    assert COLUMNS == ELEVATER  # card order is Results.md's column order
    cases = {c.id: c for c in _cases()}
    published = [c for c in cases.values() if not c.measured_only]
    assert len(published) == 60  # 5 CN-CLIP models and ZH-CLIP (expected/zh-clip-*.yaml) on 10 datasets
    for model, row in PUBLISHED.items():
        for dataset, value in zip(COLUMNS, row):
            case = cases[f"{dataset}-{model}"]
            assert case.gate == "cn-clip-results" and case.gate_values == {"top1": value}
            assert "Results.md" in case.sources["cn-clip-results"].cite
            if dataset in NOT_GATED:
                assert not case.gated and NOT_GATED[dataset] in case.report_only
            else:
                assert case.gated


def test_qa_clip_rows_are_measured_only():
    rows = [c for c in _cases() if c.measured_only]
    assert sorted(c.id for c in rows) == sorted(f"{d}-{m}" for d in COLUMNS for m in QA)
    for c in rows:
        assert c.gate_values == {} and c.check({"top1": 12.3, "top5": 45.6}) == [] and not c.gated
        assert c.report_only.startswith("measured only: ")


def test_tolerances_follow_from_the_test_set_sizes():
    """fp32: 0.05 for rounding + max(2, 0.05% of N) images (one image = 100/N points), rounded up to 0.01."""
    for dataset in COLUMNS:
        doc = yaml.safe_load((REPO / "expected" / f"{dataset}.yaml").read_text(encoding="utf-8"))
        n = doc["test_images"]["count"]
        images = max(2, math.ceil(n * 25 / 50000))
        want = math.ceil((0.05 + images * 100 / n) * 100 - 1e-9) / 100
        tol = doc["tolerance"]["fp32"]["top1"]
        assert tol["abs"] == pytest.approx(want), dataset
        assert f"{n:,} test images" in tol["why"] and f"plus {images} images" in tol["why"]


# --- measured_only in the schema -----------------------------------------------------------------

HEAD = """\
dataset: mnist
kind: zeroshot
split: test
sources: {a: somewhere}
tolerance: {fp32: {top1: {abs: 0.1, why: because}}}
models:
"""


def _load(tmp_path, body: str):
    folder = tmp_path / "exp"
    folder.mkdir(exist_ok=True)
    (folder / "mnist.yaml").write_text(HEAD + textwrap.indent(textwrap.dedent(body), "  "), encoding="utf-8")
    return load_expected(folder)


def test_measured_only_schema(tmp_path):
    (case,) = _load(tmp_path, "qa-clip-rn50:\n  measured_only: nobody published it\n")
    assert case.measured_only and case.report_only == "measured only: nobody published it"
    for body, needle in [
        (
            "qa-clip-rn50:\n  measured_only: x\n  gate: a\n  a: {top1: 1}\n",
            "models.qa-clip-rn50 is measured_only, so it takes no gate",
        ),
        ("qa-clip-rn50:\n  measured_only: ''\n", "models.qa-clip-rn50.measured_only must say why"),
        ("qa-clip-rn50:\n  measured_only: [a]\n", "models.qa-clip-rn50.measured_only must say why"),
        ("qa-clip-rn50:\n  a: {top1: 1}\n", "models.qa-clip-rn50.gate must be a non-empty string, got None"),
    ]:
        with pytest.raises(ExpectedFileError) as e:
            _load(tmp_path, body)
        assert "mnist.yaml" in str(e.value) and needle in str(e.value), str(e.value)


# --- ids and -k -----------------------------------------------------------------------------------

# pytest's own -k matching (the private module is pytest's; if it moves, this fails loudly)
COLLECT = r"""
import json, sys
import pytest
from _pytest.mark import KeywordMatcher
from _pytest.mark.expression import Expression

ids = json.loads(sys.argv[1])
class Probe:
    def pytest_collection_finish(self, session):
        self.out = {k: [i.nodeid for i in session.items if Expression.compile(k).evaluate(KeywordMatcher.from_item(i))]
                    for k in ids}
probe = Probe()
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "benchmarks",
             "-k", "test_zeroshot or test_retrieval or test_parity_hf"], plugins=[probe])
print("PROBE " + json.dumps(probe.out))
"""
# Known, accepted overlaps: the fixture's retrieval set is a prefix of its classification set's
# id (`-k fixture-shapes` selects both, as the fixture is one thing); checked to still exist.
ACCEPTED = {("fixture-shapes", "fixture-shapes-cls")}


def test_k_selects_exactly_one_datasets_cases():
    """`pytest benchmarks -k <dataset id>` selects that dataset's cases and no other dataset's, for every id."""
    datasets = [c.name for c in all_datasets()]
    run = subprocess.run(
        [sys.executable, "-c", COLLECT, json.dumps(datasets)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, run.stdout[-3000:] + run.stderr[-3000:]
    selected = json.loads(line[len("PROBE ") :])
    cases = {c.id: c.dataset for c in load_expected(REPO / "expected")}
    seen = set()
    for ds, nodeids in selected.items():
        own = [n for n in nodeids if cases.get(n.split("[", 1)[-1].rstrip("]")) == ds]
        others = sorted({cases.get(n.split("[", 1)[-1].rstrip("]"), "?") for n in nodeids} - {ds})
        for other in others:
            assert (ds, other) in ACCEPTED, (
                f"-k {ds} also selects cases of {other}: {[n for n in nodeids if n not in own][:3]}"
            )
            seen.add((ds, other))
        assert len(own) == sum(1 for d in cases.values() if d == ds), ds
    assert seen == ACCEPTED  # an accepted overlap that went away is taken off the list
    assert len(selected["cifar-10"]) == 9 and all("cifar-10-" in n for n in selected["cifar-10"])
    assert len(selected["cifar100"]) == 9
