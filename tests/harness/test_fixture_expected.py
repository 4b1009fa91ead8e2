"""The fixture's expected numbers are re-derived from the reference pipeline, so a hand edit cannot pass CI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import require_reference

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "fixture_expected.py"
FILES = ("fixture-shapes.yaml", "fixture-shapes-cls.yaml")


def _tool():
    spec = importlib.util.spec_from_file_location("fixture_expected_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_files_agree_with_the_reference_pipeline():
    """tools/fixture_expected.py --check recomputes every gated number with cn_clip and compares."""
    require_reference()
    out = subprocess.run(
        [sys.executable, str(TOOL), "--check"], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "agree with the reference pipeline" in out.stdout


def test_check_names_every_hand_edit(tmp_path):
    """The comparison sees a changed value, tolerance, digest, example probability or feature file (documents and
    features from disk stand in for recomputed ones)."""
    import shutil

    tool = _tool()
    names = (*FILES, "example/fixture-example.yaml", "reference-features/MANIFEST.yaml")
    computed = {name: yaml.safe_load((REPO / "expected" / name).read_text(encoding="utf-8")) for name in names}
    features_dir = REPO / "expected" / "reference-features"
    features = {p.name: p.read_bytes() for p in features_dir.glob("*.npy")}
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((REPO / "expected" / name).read_text(encoding="utf-8"), encoding="utf-8")
    for name in features:
        shutil.copyfile(features_dir / name, tmp_path / "reference-features" / name)
    decisions_dir = REPO / "expected" / "reference-decisions"
    decisions = {f"reference-decisions/{p.name}": p.read_text(encoding="utf-8") for p in decisions_dir.glob("*.json")}
    assert len(decisions) == 4  # two fixture models, retrieval and zero-shot
    shutil.copytree(decisions_dir, tmp_path / "reference-decisions")
    assert tool.compare_documents(computed, tmp_path, features, decisions) == []

    edited = yaml.safe_load((tmp_path / FILES[0]).read_text(encoding="utf-8"))
    entry = edited["models"]["fixture-tiny"]
    entry[entry["gate"]]["t2i_r1"] += 0.1
    edited["tolerance"]["fp32"]["i2t"]["abs"] = 5.0
    edited["data"]["test_digest"] = "0" * 64
    (tmp_path / FILES[0]).write_text(yaml.safe_dump(edited), encoding="utf-8")
    example = yaml.safe_load((tmp_path / names[2]).read_text(encoding="utf-8"))
    example["models"]["fixture-tiny-rn"]["probabilities"][0] += 1e-4
    (tmp_path / names[2]).write_text(yaml.safe_dump(example, allow_unicode=True), encoding="utf-8")
    victim = sorted(features)[0]
    (tmp_path / "reference-features" / victim).write_bytes(features[victim][:-4] + b"\0\0\0\0")
    # a decision flipped by hand (text 1 at R@10 of the ResNet fixture: no near-tie), and a stale pin
    name = "reference-decisions/fixture-shapes-fixture-tiny-rn.json"
    text = decisions[name]
    line = next(ln for ln in text.splitlines() if ln.strip().startswith('"text 1":'))
    flipped = line.replace('"hit"', '"miss"') if '"hit"' in line else line.replace('"miss"', '"hit"')
    (tmp_path / name).write_text(text.replace(line, flipped, 1), encoding="utf-8")
    problems = "\n".join(tool.compare_documents(computed, tmp_path, features, decisions))
    assert "t2i_r1" in problems and "tolerance.fp32.i2t" in problems and "data.test_digest" in problems
    assert "fixture-tiny-rn.probabilities" in problems and f"{victim}: sha256" in problems
    assert f"{name}: t2i_r1 text 1 is" in problems and "models.fixture-tiny-rn.decisions.sha256 is not" in problems

    (tmp_path / FILES[1]).unlink()
    assert any("missing" in p for p in tool.compare_documents(computed, tmp_path))
