"""The fuzz campaign's counts: with QACLIP_FUZZ_STATS set (tools/fuzz.py sets it), each test process writes the
examples, accepted and refused documents per format into that folder at its end."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fuzz.support import STATS


def pytest_sessionfinish(session, exitstatus):
    folder = os.environ.get("QACLIP_FUZZ_STATS")
    if folder and STATS:
        path = Path(folder) / f"stats-{os.getpid()}.json"
        path.write_text(json.dumps({fmt: dict(c) for fmt, c in STATS.items()}, indent=1), encoding="utf-8")
