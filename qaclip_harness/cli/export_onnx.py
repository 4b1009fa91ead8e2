"""``python -m qaclip_harness export-onnx``: a registry model or a checkpoint file to an ONNX export folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import cast


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export-onnx`` subcommand to the CLI's subparsers."""
    from qaclip_harness.export.onnx import DEFAULT_OPSET, MIN_OPSET

    ex = sub.add_parser(
        "export-onnx", help="export a model to ONNX (image and text models, dynamic batch and sequence axes, manifest)"
    )
    who = ex.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="registry name (see `python -m qaclip_harness models`)")
    who.add_argument("--checkpoint", type=Path, help="a local checkpoint file")
    ex.add_argument("--arch", help="VISION@TEXT for --checkpoint (inferred from the weights when omitted)")
    ex.add_argument(
        "--out",
        type=_output_folder,
        required=True,
        help="folder for image.onnx, text.onnx, their weights and manifest.json",
    )
    ex.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    ex.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset ({MIN_OPSET} or newer; default {DEFAULT_OPSET})"
    )
    ex.add_argument(
        "--checkpoint-dir", type=Path, help="download folder for --model (default ~/.cache/qaclip/checkpoints)"
    )
    ex.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return ex


def _output_folder(value: str) -> Path:
    """``--out``: probed when parsed (the export is made in a sibling, then moved in; nothing is created now)."""
    from qaclip_harness import options

    try:
        path = cast(Path, options.output_folder_later(value, "--out"))  # a value gives a folder, never None
    except options.OptionError as e:
        raise argparse.ArgumentTypeError(f"{value!r}: {e.detail}") from None
    return path


def run_export(args: argparse.Namespace) -> int:
    """Run ``export-onnx``; returns the exit status (2 with a one-line error on bad input)."""
    from qaclip_core.errors import QAClipError
    from qaclip_harness.backends.onnx import verify_export
    from qaclip_harness.export.onnx import export_checkpoint

    try:
        if args.model:
            from qaclip_core.pretrained import cache_root
            from qaclip_core.registry import get_card
            from qaclip_harness.fetch.weights import fetch_weights

            card = get_card(args.model)
            if card.adapter != "native":
                raise QAClipError(f"{card.name} is a {card.adapter} model; export-onnx exports qaclip_core models")
            if card.test_only:  # the embedded fixture ships inside the package
                from qaclip_harness.fixture import packaged_checkpoint

                path = packaged_checkpoint(card.name)
            else:
                path = fetch_weights(card, download_root=args.checkpoint_dir or cache_root() / "checkpoints")
            manifest = export_checkpoint(
                path,
                args.out,
                arch=card.arch,
                precision=args.precision,
                opset=args.opset,
                name=card.name,
                verify=verify_export,
            )
        else:
            manifest = export_checkpoint(
                args.checkpoint,
                args.out,
                arch=args.arch,
                precision=args.precision,
                opset=args.opset,
                verify=verify_export,
            )
    except (QAClipError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manifest.to_dict(), ensure_ascii=False))
    else:
        v = manifest.verification
        print(
            f"exported {manifest.model} ({manifest.arch}, {manifest.precision}, opset {manifest.opset}) to {args.out}"
        )
        for _tower, rec in manifest.towers.items():
            print(
                f"  {rec['file']}: {rec['input']['name']} {rec['input']['shape']} {rec['input']['dtype']} -> "
                f"{rec['output']['name']} {rec['output']['shape']} {rec['output']['dtype']}"
            )
        if v:
            print(
                f"  checked with ONNX Runtime: max |d| of normalised features image {v['image_max_abs_diff']:.1e}, "
                f"text {v['text_max_abs_diff']:.1e}"
            )
    return 0
