"""The GPU throughput check of issue 4 as one command: run it on a machine with a CUDA card.

    python tools/gpu_check.py [--out benchmarks/results] [-- extra pytest args]

Runs the matmul-peak cases and encode_image of ViT-B/16 and ViT-L/14 at batch 256 in fp16 and
bf16 (ours and cn_clip's in the same groups), saves the pytest-benchmark JSON as
``<out>/<card>-encode-image-b256.json`` and prints the speed-ups and the FLOP-bound shares
(tools/throughput_report.py).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELECTION = "matmul or ((vit-b-16 or (vit-l-14 and not 336)) and b256 and (fp16 or bf16))"


def card_slug() -> str:
    """The CUDA card's name as a file-name part, e.g. ``nvidia-h100-80gb-hbm3``."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False)")
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def main() -> int:
    """Run the cases, save the JSON, print the report; returns pytest's exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("pytest_args", nargs="*")
    args = p.parse_args()
    out = args.out / f"{card_slug()}-encode-image-b256.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "benchmarks"),
        "-m",
        "throughput",
        "-k",
        f"test_throughput.py and ({SELECTION})",
        "-p",
        "no:xdist",
        f"--benchmark-json={out}",
        *args.pytest_args,
    ]
    code = subprocess.call(cmd, cwd=ROOT)
    if out.exists():
        subprocess.call([sys.executable, str(ROOT / "tools" / "throughput_report.py"), str(out)], cwd=ROOT)
        print(f"saved {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
