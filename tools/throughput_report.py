"""Tables from a saved pytest-benchmark run: speed-ups over cn_clip, and shares of the FLOP bound.

    python tools/throughput_report.py .benchmarks/<machine>/0001_<commit>.json [--markdown]

The first table pairs every qaclip_core record with the reference records of its group, and
every ONNX Runtime record with the (eager) qaclip_core record of its group. The
second (when the run has encode_image records) gives, per record, the achieved TFLOP/s of the
nominal FLOPs, its share of the dense matmul rate measured in the same run, and its share of
the bound in benchmarks/flop_bounds.yaml where that file has one for the card, marked against
the target share for the target cases.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from collections import defaultdict
from pathlib import Path

import yaml

BOUNDS = Path(__file__).resolve().parent.parent / "benchmarks" / "flop_bounds.yaml"
DEPLOYED = ("onnxruntime",)  # impl names of exported models, shown as <deployed> / qaclip_core


def _records(path: Path) -> list:
    return json.loads(path.read_text(encoding="utf-8"))["benchmarks"]


def ratios(path: Path) -> list:
    """One row per (ours, reference) pair in each group: items/s of each and the speed-up."""
    groups = defaultdict(dict)
    scaled = []
    for bench in _records(path):
        info = bench.get("extra_info", {})
        if "reference_seconds_scaled" in info:  # a reference timed on a sample and scaled (scoring)
            ours_s, ref_s = bench["stats"]["mean"], info["reference_seconds_scaled"]
            scaled.append(
                (bench["group"], "qaclip_core / cn_clip (sampled, scaled)", 1 / ours_s, 1 / ref_s, ref_s / ours_s)
            )
            continue
        impl = info.get("impl", "qaclip_core")
        if "workers" in info:
            impl = f"{impl} w{info['workers']}"
        groups[bench["group"]][impl] = info.get("items_per_s") or (1.0 / bench["stats"]["mean"])
    rows = []
    for group, impls in sorted(groups.items()):
        ours = {k: v for k, v in impls.items() if k.startswith("qaclip_core")}
        # an export of our model run elsewhere (ONNX Runtime) is compared with our PyTorch model
        deployed = {k: v for k, v in impls.items() if k.startswith(DEPLOYED)}
        others = {k: v for k, v in impls.items() if k not in ours and k not in deployed}
        for name, mine in ours.items():
            for other, theirs in others.items():
                rows.append((group, f"{name} / {other}", mine, theirs, mine / theirs))
            if not others and not deployed:
                rows.append((group, name, mine, None, None))
        for name, speed in deployed.items():
            for base in [k for k in ours if "+" not in k]:  # against eager PyTorch, not the compiled variant
                rows.append((group, f"{name} / {base}", speed, ours[base], speed / ours[base]))
    return rows + scaled


def _bound(bounds: dict, device_name: str, precision: str) -> dict | None:
    for entry in bounds.get("bounds", []):
        if entry["device_name_contains"] in device_name and precision in entry["precisions"]:
            return entry
    return None


def _is_target(bounds: dict, info: dict) -> bool:
    target = bounds.get("target_cases", {})
    return (
        info.get("impl") == "qaclip_core"
        and any(fnmatch.fnmatch(info.get("arch", ""), pat) for pat in target.get("archs", []))
        and info.get("batch") == target.get("batch")
        and info.get("precision") in target.get("precisions", [])
    )


def flop_shares(path: Path, bounds: dict) -> list[tuple]:
    """(case, img/s, achieved TFLOP/s, share of measured matmul, share of bound, verdict) per encode_image record."""
    records = _records(path)
    matmul = {
        (b["extra_info"].get("device"), b["extra_info"].get("precision")): b["extra_info"]["achieved_tflops"]
        for b in records
        if b["extra_info"].get("impl") == "torch matmul"
    }
    rows = []
    for b in records:
        info = b["extra_info"]
        if "nominal_gflops_per_item" not in info:
            continue
        achieved = info["items_per_s"] * info["nominal_gflops_per_item"] / 1e3
        peak = matmul.get((info.get("device"), info["precision"]))
        bound = _bound(bounds, info.get("device_name", ""), info["precision"])
        share = achieved / bound["tflops"] if bound else None
        verdict = ""
        if bound and _is_target(bounds, info):
            verdict = (
                "meets target" if share >= bounds["target_share"] else f"below the {bounds['target_share']:.0%} target"
            )
        rows.append((b["name"], info["items_per_s"], achieved, achieved / peak if peak else None, share, verdict))
    return rows


def main() -> None:
    """Print the tables for one saved run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path)
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--bounds", type=Path, default=BOUNDS, help="FLOP bounds and target (default: benchmarks/flop_bounds.yaml)"
    )
    args = p.parse_args()
    fmt = lambda v, spec=",.2f": "-" if v is None else format(v, spec)  # noqa: E731
    rows = ratios(args.json)
    if args.markdown:
        print("| group | compared | qaclip_core items/s | reference items/s | speed-up |")
        print("|---|---|---|---|---|")
        for g, o, a, b, r in rows:
            print(f"| {g} | {o} | {fmt(a)} | {fmt(b)} | {fmt(r)}x |")
    else:
        for g, o, a, b, r in rows:
            print(f"{g:<66} {o:>30} {fmt(a):>10} {fmt(b):>10} {fmt(r):>7}x")
    shares = flop_shares(args.json, yaml.safe_load(args.bounds.read_text(encoding="utf-8")))
    if not shares:
        return
    print()
    if args.markdown:
        print("| case | img/s | achieved TFLOP/s (nominal) | share of measured matmul | share of FLOP bound | |")
        print("|---|---|---|---|---|---|")
        for case, ips, tf, sm, sb, verdict in shares:
            print(f"| {case} | {fmt(ips)} | {fmt(tf, '.3f')} | {fmt(sm, '.1%')} | {fmt(sb, '.1%')} | {verdict} |")
    else:
        print(f"{'encode_image case':<70} {'img/s':>10} {'TFLOP/s':>9} {'of matmul':>10} {'of bound':>9}")
        for case, ips, tf, sm, sb, verdict in shares:
            print(f"{case:<70} {fmt(ips):>10} {fmt(tf, '.3f'):>9} {fmt(sm, '.1%'):>10} {fmt(sb, '.1%'):>9}  {verdict}")


if __name__ == "__main__":
    main()
