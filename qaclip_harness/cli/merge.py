"""``qaclip merge-reports SHARD_DIR... --out DIR``: one report from the --report folders of a sweep's shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qaclip_core.errors import QAClipError


def add_merge_parser(sub: Any) -> None:
    """Register the ``merge-reports`` subcommand."""
    mr = sub.add_parser(
        "merge-reports",
        help="one report.json, report.md, report.html and JUnit XML from the --report folders of the shards of "
        "one sweep (pytest --shard K/N); refused, one line each, for a case that ran twice or nowhere, or shards of "
        "different selections, commits or tolerance files",
    )
    mr.add_argument("shards", nargs="+", type=Path, metavar="SHARD_DIR", help="each shard's --report folder")
    mr.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the merged report")


def run_merge(args: argparse.Namespace) -> int:
    """Merge; 2 when refused (one ``error:`` line per problem), 1 when a merged case failed, else 0."""
    from qaclip_harness import options
    from qaclip_harness.report.merge import MergeError, merge

    try:
        out = options.new_output_folder(args.out, "--out", will_write=("report.json", "report.md"))
        results, paths = merge(args.shards, out or args.out)
    except MergeError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no case"
    print(f"merged {len(args.shards)} shard(s): {len(results)} case(s): {summary}")
    for path in paths:
        print(f"report written to {path}")
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if bad:
        print(f"qaclip: {bad} case(s) failed or errored (see report.md)", file=sys.stderr)
        return 1
    return 0
