"""Ratio table from a saved pytest-benchmark run: qaclip_core against cn_clip, per group.

    python tools/throughput_report.py .benchmarks/<machine>/0001_<commit>.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def ratios(path: Path) -> list:
    """One row per (ours, reference) pair in each group: items/s of each and the speed-up."""
    data = json.loads(path.read_text(encoding="utf-8"))
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        impl = info.get("impl", "qaclip_core")
        if "workers" in info:
            impl = f"{impl} w{info['workers']}"
        groups[bench["group"]][impl] = info.get("items_per_s") or (1.0 / bench["stats"]["mean"])
    rows = []
    for group, impls in sorted(groups.items()):
        ours = {k: v for k, v in impls.items() if k.startswith("qaclip_core")}
        others = {k: v for k, v in impls.items() if not k.startswith("qaclip_core")}
        for name, mine in ours.items():
            for other, theirs in others.items():
                rows.append((group, f"{name} / {other}", mine, theirs, mine / theirs))
            if not others:
                rows.append((group, name, mine, None, None))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    rows = ratios(args.json)
    fmt = lambda v: "-" if v is None else f"{v:,.2f}"  # noqa: E731
    if args.markdown:
        print("| group | compared | qaclip_core items/s | reference items/s | speed-up |")
        print("|---|---|---|---|---|")
        for g, o, a, b, r in rows:
            print(f"| {g} | {o} | {fmt(a)} | {fmt(b)} | {fmt(r)}x |")
    else:
        for g, o, a, b, r in rows:
            print(f"{g:<66} {o:>30} {fmt(a):>10} {fmt(b):>10} {fmt(r):>7}x")


if __name__ == "__main__":
    main()
