"""The fuzz campaign's long run, by hand: every format of tests/fuzz with many more examples, from a seed.

    python tools/fuzz.py [--scale 40] [--seed 1] [--jobs 2] [--only FORMAT_TEST_SUBSTRING] [--hang-seconds 60]

CI runs the same properties with a few dozen derandomised examples per format (tests/fuzz, about a
minute); this multiplies each format's examples by ``--scale`` and draws them from ``--seed`` (a new
seed finds new inputs). It prints, per format, the examples tried and how many documents the reader
accepted or refused, then each failing property with Hypothesis's shrunk example; a failure is a defect
to fix and to keep as a regular test. Exit status 0 when every property held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the long campaign and print its figures; exit 0 only when every property held."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=40.0, help="examples per format: CI's times this (default 40)")
    p.add_argument("--seed", type=int, default=1, help="Hypothesis seed (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="pytest-xdist workers (default 1)")
    p.add_argument("--only", default="", help="run the fuzz tests whose name contains this (pytest -k)")
    p.add_argument("--hang-seconds", type=float, default=60.0, help="one example longer than this is a hang")
    p.add_argument("--log", type=Path, help="write pytest's whole output here (every failure in full)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qaclip-fuzz-stats-") as stats:
        env = {
            **os.environ,
            "QACLIP_FUZZ_SCALE": str(args.scale),
            "QACLIP_FUZZ_LONG": "1",
            "QACLIP_FUZZ_STATS": stats,
            "QACLIP_FUZZ_HANG_SECONDS": str(args.hang_seconds),
        }
        cmd = [sys.executable, "-m", "pytest", "tests/fuzz", "-p", "no:cacheprovider", "-q", "--tb=short"]
        cmd += [f"--hypothesis-seed={args.seed}", "-o", "console_output_style=classic"]
        cmd += ["-n", str(args.jobs)] if args.jobs > 1 else ["-p", "no:xdist"]
        cmd += ["-k", args.only] if args.only else []
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        totals: dict[str, Counter] = {}
        for f in Path(stats).glob("stats-*.json"):
            for fmt, counts in json.loads(f.read_text(encoding="utf-8")).items():
                totals.setdefault(fmt, Counter()).update(counts)
    width = max([len(f) for f in totals] + [6]) + 2
    print(f"seed {args.seed}, scale {args.scale:g}: {seconds:.0f} s")
    print(f"{'format':<{width}}{'examples':>9}{'accepted':>10}{'refused':>9}")
    for fmt in sorted(totals):
        c = totals[fmt]
        print(f"{fmt:<{width}}{c['examples']:>9}{c['accepted']:>10}{c['refused']:>9}")
    failed = re.findall(r"^FAILED (\S+)", out.stdout, flags=re.M)
    if args.log:
        args.log.write_text(out.stdout + out.stderr, encoding="utf-8")
    if failed or out.returncode not in (0,):
        for name in failed:  # each failure's section: its shrunk example and the exception
            test = name.split("::")[-1]
            m = re.search(
                rf"^_+ {re.escape(test)} _+$(.*?)(?=^_{{5,}} \w|^=+ short test summary)", out.stdout, re.M | re.S
            )
            print(f"--- {name}\n{(m.group(1) if m else '')[-6000:].strip()}\n")
        print(out.stderr[-3000:], file=sys.stderr)
    print(
        f"{len(totals)} formats, {sum(c['examples'] for c in totals.values())} examples, {len(failed)} failing properties"
    )
    return 0 if out.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
