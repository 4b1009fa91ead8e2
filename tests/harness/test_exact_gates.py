"""The fixture's gates are exact: tolerance 1e-6 (the rounding of the written values), plus one query per near-tie item named in the expected file."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from qaclip_core.errors import QAClipError
from qaclip_harness.expected import load_expected
from qaclip_harness.fixture import MODELS
from qaclip_harness.gates.example import load_example_folder

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "expected"


@pytest.mark.parametrize("name, groups", [("fixture-shapes.yaml", ("t2i", "i2t", "mean")),
                                          ("fixture-shapes-cls.yaml", ("top1", "top5"))])
def test_fp32_tolerance_is_the_rounding_and_near_ties_earn_one_query_each(name, groups):
    doc = yaml.safe_load((EXPECTED / name).read_text(encoding="utf-8"))
    for group in groups:
        assert doc["tolerance"]["fp32"][group]["abs"] == 1e-6, (name, group)
    n = doc["data"]["texts"] if "texts" in doc["data"] else doc["data"]["images"]
    one = {"t2i": 100 / n, "i2t": 100 / doc["data"]["images"], "top1": 100 / doc["data"]["images"],
           "top5": 100 / doc["data"]["images"]}
    for model in MODELS:
        entry = doc["models"][model]
        own = (entry.get("tolerance") or {}).get("fp32") or {}
        for metric, items in (entry.get("near_ties") or {}).items():
            assert items and all("margin" in i for i in items)
            assert math.isclose(own[metric]["abs"], len(items) * one[metric.split("_")[0]] + 1e-6, abs_tol=1e-3 * len(items)), (model, metric)
        assert set(own) - set(entry.get("near_ties") or {}) <= {"t2i_mean_recall", "i2t_mean_recall", "mean_recall"}


def test_near_ties_are_read_and_named(tmp_path):
    doc = yaml.safe_load((EXPECTED / "fixture-shapes.yaml").read_text(encoding="utf-8"))
    entry = doc["models"]["fixture-tiny"]
    entry["near_ties"] = {"t2i_r1": ["text 7 (margin 1.0e-05)"]}
    (tmp_path / "fixture-shapes.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    (case,) = [c for c in load_expected(tmp_path) if c.model == "fixture-tiny"]
    assert case.near_ties == {"t2i_r1": ["text 7 (margin 1.0e-05)"]}
    assert case.near_tie_note() == "t2i_r1: text 7 (margin 1.0e-05)"
    entry["near_ties"] = ["text 7"]
    (tmp_path / "fixture-shapes.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(QAClipError, match="near_ties must map metrics to lists"):
        load_expected(tmp_path)


def test_example_specs_come_from_every_file_of_the_folder(tmp_path):
    specs = load_example_folder(EXPECTED / "example")
    assert specs["cn-clip-vit-b-16"].probabilities is not None
    for model in MODELS:
        spec = specs[model]
        assert spec.labels[:4] == ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"] and any(ch.isupper() for ch in "".join(spec.labels))
        assert spec.probabilities is not None and spec.tolerance <= 1e-4 and spec.precisions == ("fp32",)
    for path in (EXPECTED / "example").glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    doc = yaml.safe_load((tmp_path / "fixture-example.yaml").read_text(encoding="utf-8"))
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(QAClipError, match="also listed in"):
        load_example_folder(tmp_path)
