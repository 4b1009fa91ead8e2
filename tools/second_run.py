"""A second `pytest benchmarks -k fixture` run against the first: reuse, an identical report, and the time saved.

    python tools/second_run.py [--touch]

Runs the fixture selection twice with a fresh cache (QACLIP_CACHE in a temporary folder) and
prints, per reproduction case (test_retrieval, test_zeroshot), the seconds of both runs (pytest's
JUnit times) and the ratio of their sums; checks that the second run reused every feature, that
its report equals the first one but for the lines and fields that say computed or reused (and the
timings), and, with --touch, that a third run from a copy of the tree with one line added to the
preprocessing (qaclip_core/transforms.py) recomputes every case. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE = ("qaclip_core", "qaclip_harness", "benchmarks", "expected", "pyproject.toml")
REPRODUCTION = ("test_retrieval", "test_zeroshot")


def run_suite(cwd: Path, cache: Path, out: Path) -> dict:
    """One `pytest benchmarks -k fixture` run; its reproduction cases' seconds, report.json and report.md."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    env.update(QACLIP_CACHE=str(cache))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-k",
        "fixture",
        "-m",
        "not throughput",
        "-q",
        "-p",
        "no:cacheprovider",
        "--report",
        str(out / "report"),
        "--junit-xml",
        str(out / "junit.xml"),
    ]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        sys.exit(f"the suite failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    seconds = {}
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        if case.get("classname", "").split(".")[-1] in REPRODUCTION:
            seconds[case.get("name")] = float(case.get("time"))
    doc = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "json": doc, "md": (out / "report" / "report.md").read_text(encoding="utf-8")}


def comparable(run: dict) -> tuple:
    """The report less what must differ between a computing and a reusing run: reuse lines and fields, timings."""
    results = [{k: v for k, v in r.items() if k not in ("features", "seconds")} for r in run["json"]["results"]]
    lines = [line for line in run["md"].splitlines() if not re.search(r": features[ :]", line)]
    return results, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--touch", action="store_true", help="also run from a copy with a line added to the preprocessing"
    )
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="qaclip-second-run-") as tmp_name:
        tmp = Path(tmp_name)
        first = run_suite(REPO, tmp / "cache", tmp / "first")
        second = run_suite(REPO, tmp / "cache", tmp / "second")
        print(f"{'case':<58}{'first s':>9}{'second s':>10}")
        for name, s in first["seconds"].items():
            print(f"{name:<58}{s:>9.2f}{second['seconds'].get(name, float('nan')):>10.2f}")
        a, b = sum(first["seconds"].values()), sum(second["seconds"].values())
        print(f"{'reproduction cases, total':<58}{a:>9.2f}{b:>10.2f}   ratio {a / b:.1f}x")
        statuses = {
            r["model"] + "/" + r["dataset"]: (r.get("features") or {}).get("status")
            for r in second["json"]["results"]
            if r.get("features")
        }
        print(
            f"second run: {sum(s == 'reused' for s in statuses.values())} of {len(statuses)} evaluated cases reused every feature"
        )
        if set(statuses.values()) != {"reused"}:
            failures.append(f"not every case reused its features: {statuses}")
        if comparable(first) != comparable(second):
            failures.append("the second report differs from the first beyond the reuse lines")
        else:
            print("reports identical but for the lines and fields saying computed or reused, and the timings")
        if a < 5 * b:
            failures.append(f"the second run's reproduction cases took {b:.2f} s, more than a fifth of {a:.2f} s")
        if args.touch:
            copy = tmp / "tree"
            for name in TREE:
                src = REPO / name
                (
                    shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
                    if src.is_dir()
                    else shutil.copy2(src, copy / name)
                )
            with open(copy / "qaclip_core" / "transforms.py", "a", encoding="utf-8") as f:
                f.write("\n# a touched line\n")
            third = run_suite(copy, tmp / "cache", tmp / "third")
            statuses = {(r.get("features") or {}).get("status") for r in third["json"]["results"] if r.get("features")}
            print(f"after touching qaclip_core/transforms.py: feature statuses {sorted(statuses)}")
            if statuses != {"computed"}:
                failures.append("touching the preprocessing did not recompute every case")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
