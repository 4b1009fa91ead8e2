"""Every output sample in README.md and docs/ is what its command prints today (tools/doc_samples.py): the numbers and
the shape of every line shown, with run-specific parts (times, paths under HOME, run names, commits) masked. A stale
sample fails naming the file and line, with the diff; `python tools/doc_samples.py` rewrites them all."""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
# samples whose command another test already runs, and which that test compares
CHECKED_ELSEWHERE = {"python tools/history_example.py": REPO / "tests" / "harness" / "test_history_runs.py"}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doc_samples_tool", REPO / "tools" / "doc_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tool = _load()
SAMPLES = tool.samples()


@cache
def _printed(command: str) -> tuple[str, ...]:
    return tuple(tool.run(command))


def test_the_docs_hold_samples_and_each_one_is_checked():
    commands = {s.command for s in SAMPLES}
    assert len(SAMPLES) >= 3 and any(s.doc.name == "README.md" for s in SAMPLES)
    for command, test in CHECKED_ELSEWHERE.items():
        assert command in commands, f"no sample shows {command!r} any more: drop it from CHECKED_ELSEWHERE"
        assert "doc_samples" in test.read_text(encoding="utf-8"), f"{test.name} no longer checks the sample"


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.command not in CHECKED_ELSEWHERE], ids=lambda s: s.where)
def test_sample_is_what_its_command_prints(sample):
    printed = list(_printed(sample.command))
    if not tool.matches(sample.lines, printed):
        fresh, _ = tool.regenerate(sample.lines, printed)
        pytest.fail(
            f"{sample.where}: the sample of `{sample.command}` is stale (python tools/doc_samples.py rewrites it); "
            "what it prints now, in the sample's excerpt:\n" + "\n".join(fresh) + "\n\nin full:\n" + "\n".join(printed),
            pytrace=False,
        )


def test_a_planted_stale_sample_turns_red(tmp_path):
    """A number changed in a copy of the README's sample is caught; the run-specific parts of a line are not compared."""
    (sample,) = [s for s in SAMPLES if s.doc.name == "README.md"]
    printed = list(_printed(sample.command))
    assert tool.matches(sample.lines, printed)
    doc = tmp_path / "README.md"
    text = sample.doc.read_text(encoding="utf-8")
    closing = next(line for line in sample.lines if " skipped, " in line and " deselected in " in line)
    stale = closing.replace(" skipped, ", "1 skipped, ", 1)  # 22 -> 221: what a retrained fixture or new cases do
    doc.write_text(text.replace(closing, stale), encoding="utf-8")
    (planted,) = tool.samples([doc])
    assert not tool.matches(planted.lines, printed)
    # another run's seconds and rule length are not a difference
    other = "==" + re.sub(r" in [\d.]+s", " in 1234.56s (0:20:34)", closing) + "=="
    assert tool.matches([other if line == closing else line for line in sample.lines], printed)
    # an excerpt: lines may be left out only where the sample says so
    assert not tool.matches([line for line in sample.lines if line != tool.GAP], printed)


def test_rewriting_keeps_the_excerpt_and_takes_the_new_numbers():
    sample = ["$ x", "...", "accuracy  a  top1   65.83  62.50    -3.33    400% of tol !", "...", "3 runs; done in 1.0s"]
    printed = ["header", "accuracy  a  top1   34.46  31.67    -2.79    300% of tol !", "other", "3 runs; done in 2.0s"]
    fresh, lost = tool.regenerate(sample[1:], printed)
    assert fresh == ["...", printed[1], "...", printed[3]] and not lost
    assert tool.matches(fresh, printed)
