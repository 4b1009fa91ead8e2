"""Ratio table from a saved pytest-benchmark run: qaclip_core against cn_clip, per group.

    python tools/throughput_report.py .benchmarks/<machine>/0001_<commit>.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def ratios(path: Path) -> list:
    """One row per benchmark group: items/s of each implementation and the speed-up."""
    data = json.loads(path.read_text(encoding="utf-8"))
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        impl = info.get("impl", "qaclip_core")
        groups[bench["group"]][impl] = info.get("items_per_s") or (1.0 / bench["stats"]["mean"])
    rows = []
    for group, impls in sorted(groups.items()):
        ours = impls.pop("qaclip_core", None)
        for other, theirs in impls.items():
            rows.append((group, other, ours, theirs, ours / theirs if ours and theirs else None))
        if not impls:
            rows.append((group, "-", ours, None, None))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    rows = ratios(args.json)
    fmt = lambda v: "-" if v is None else f"{v:,.2f}"  # noqa: E731
    if args.markdown:
        print("| group | reference | qaclip_core items/s | reference items/s | speed-up |")
        print("|---|---|---|---|---|")
        for g, o, a, b, r in rows:
            print(f"| {g} | {o} | {fmt(a)} | {fmt(b)} | {fmt(r)}x |")
    else:
        for g, o, a, b, r in rows:
            print(f"{g:<72} {o:>13} {fmt(a):>12} {fmt(b):>12} {fmt(r):>8}x")


if __name__ == "__main__":
    main()
