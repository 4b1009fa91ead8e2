"""Every real dataset's expected file says what its tolerance still catches and what published evidence it allows for (issue 21)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REAL = sorted(p for p in (REPO / "expected").glob("*.yaml") if not p.name.startswith("fixture"))


def test_there_are_real_expected_files():
    assert len(REAL) >= 16


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_tolerance_audit_is_written(path):
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    audit = doc.get("tolerance_audit")
    assert isinstance(audit, dict), f"{path}: no tolerance_audit (what the gate catches, what evidence it allows for)"
    assert audit.get("catches") and all(isinstance(c, str) and c.strip() for c in audit["catches"]), path
    for key in ("allows_for", "reconcile"):
        assert isinstance(audit.get(key), str) and len(audit[key].split()) >= 8, (
            f"{path}: tolerance_audit.{key} is missing or empty"
        )
    # every catch line names how many queries the tolerance lets through, not only points
    assert all(any(ch.isdigit() for ch in c) for c in audit["catches"])
