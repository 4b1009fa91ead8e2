"""The bad-input campaign (tools/bad_inputs.py): every fault handled cleanly through the CLI and the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_bad_input_is_handled_cleanly():
    """Expected exit code, no traceback, the culprit named, nothing left behind: for every fault."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bad_inputs.py"), "--verbose"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) bad inputs, (\d+) handled cleanly", last)
    assert m, out.stdout[-3000:] + out.stderr[-3000:]
    total, clean = int(m.group(1)), int(m.group(2))
    assert total >= 60 and clean == total, out.stdout[-6000:]
    assert out.returncode == 0
