"""tools/mutation_check.py stays applicable: every mutant's text occurs exactly once in the tree, and it covers every area."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_check_tool", REPO / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_exactly_once():
    tool = _tool()
    for m in tool.MUTANTS:
        if not m.path:  # a variable of the run's environment
            assert m.env and m.expect == "same"
            continue
        text = (REPO / m.path).read_text(encoding="utf-8")
        assert text.count(m.old) == 1, f"{m.name}: its text occurs {text.count(m.old)} times in {m.path}"
        assert m.old != m.new


def test_the_set_covers_every_area_with_at_least_25_mutants():
    tool = _tool()
    names = [m.name for m in tool.MUTANTS]
    assert len(names) == len(set(names)) >= 25
    assert {m.area for m in tool.MUTANTS} == {
        "preprocessing",
        "tokenizer",
        "text tower",
        "ViT",
        "ResNet",
        "evaluation",
        "precision",
        "loading",
        "suite",
        "export",
        "decoding",
        "data identity",
        "environment",
    }


def test_a_mutant_is_applied_to_a_copy_never_to_the_tree(tmp_path):
    tool = _tool()
    m = tool.MUTANTS[0]
    before = (REPO / m.path).read_text(encoding="utf-8")
    (tmp_path / m.path).parent.mkdir(parents=True)
    (tmp_path / m.path).write_text(before, encoding="utf-8")
    tool.apply(tmp_path, m)
    assert (tmp_path / m.path).read_text(encoding="utf-8") == before.replace(m.old, m.new)
    assert (REPO / m.path).read_text(encoding="utf-8") == before
