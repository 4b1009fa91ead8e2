"""Expected entries published for particular run settings (ONNX fp16): parsed, named apart, and run only there."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from qaclip_core.errors import QAClipError
from qaclip_harness.expected import load_expected

REPO = Path(__file__).resolve().parents[2]


def test_onnx_entries_have_their_own_ids_and_settings():
    cases = load_expected(REPO / "expected")
    ids = Counter(c.id for c in cases)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    onnx = {c.id: c for c in cases if c.requires}
    assert set(onnx) == {
        "muge-cn-clip-vit-b-16-onnx-fp16",
        "muge-cn-clip-vit-h-14-onnx-fp16",
        "readme-example-cn-clip-vit-b-16-onnx-fp16",
    }
    b16 = onnx["muge-cn-clip-vit-b-16-onnx-fp16"]
    assert b16.gate_values == {"t2i_r1": 52.0, "t2i_r5": 76.8, "t2i_r10": 84.3, "t2i_mean_recall": 71.1}
    assert onnx["muge-cn-clip-vit-h-14-onnx-fp16"].gate_values == {
        "t2i_r1": 63.1,
        "t2i_r5": 84.1,
        "t2i_r10": 89.0,
        "t2i_mean_recall": 78.8,
    }
    assert b16.variant == "onnx fp16" and b16.tolerance("t2i_mean_recall", "fp16").abs == 0.2
    probs = onnx["readme-example-cn-clip-vit-b-16-onnx-fp16"].gate_values
    assert list(probs.values()) == [0.12252, 5.2874, 0.067116, 94.523]


def test_unmet_settings_name_the_options():
    case = next(c for c in load_expected(REPO / "expected") if c.id == "muge-cn-clip-vit-b-16-onnx-fp16")
    assert case.unmet({"backend": "onnx", "precision": "fp16"}) == []
    assert case.unmet({"backend": "pytorch", "precision": "fp16"}) == ["--backend onnx"]
    assert case.unmet({"backend": "onnx", "precision": "fp32"}) == ["--precision fp16"]
    plain = next(c for c in load_expected(REPO / "expected") if c.id == "muge-cn-clip-vit-b-16")
    assert plain.unmet({"backend": "onnx", "precision": "bf16"}) == [] and plain.variant == ""


def test_malformed_requires_is_named(tmp_path):
    doc = yaml.safe_load((REPO / "expected" / "muge-onnx.yaml").read_text(encoding="utf-8"))
    doc["requires"] = ["onnx"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(QAClipError, match=r"bad\.yaml: requires must map run settings"):
        load_expected(tmp_path)
