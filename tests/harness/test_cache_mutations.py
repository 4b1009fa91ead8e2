"""A warm cache gives the cold run's verdicts: the mutation check's CI subset, run by the tests env.

``tools/mutation_check.py --ci`` applies each mutant of its CI subset (one per area a hand-kept key
missed: loading, the suite, the export, decoding, data identity, an environment variable; and one
of the preprocessing, the tokenizer and the metrics) to a copy of the tree and runs the suite there
cold (an empty cache) and warm (a copy of the cache the unmutated tree filled). Every case must get
the same verdict, numbers, data fingerprint and features warm as cold, every mutant must be killed
by a gate's verdict (a crash or an import error is not a kill), and the data-identity and
environment mutants, which need not turn the gate red, must still match. The whole set (43 mutants)
is ``python tools/mutation_check.py``; docs/offline-gate.md has its table.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_check_tool", REPO / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_ci_subset_covers_every_area_outside_the_old_key():
    tool = _tool()
    areas = {m.area for m in tool.MUTANTS if m.name in tool.CI}
    assert {"loading", "suite", "export", "decoding", "data identity", "environment"} <= areas
    assert set(tool.CI) <= {m.name for m in tool.MUTANTS}


@pytest.mark.slow
def test_warm_equals_cold_for_every_mutant_of_the_ci_subset(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "mutation_check.py"), "--ci", "--json", str(tmp_path / "rows.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    report = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode in (0, 1), report
    rows = {r["mutant"]: r for r in json.loads((tmp_path / "rows.json").read_text(encoding="utf-8"))}
    assert set(rows) == set(_tool().CI), report
    for name, row in rows.items():
        assert row["differences"] == [], f"{name}: the warm run differs from the cold one\n{report}"
        assert row["verdict"] in ("killed", "matched"), f"{name}: {row['verdict']} {row['broken']}\n{report}"
    assert out.returncode == 0, report
