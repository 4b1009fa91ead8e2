"""Command line: ``python -m qaclip_core eval ...`` for any checkpoint on any dataset folder."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .data.loader import resolve_workers
from .errors import QAClipError


def _workers(value: str) -> str:
    try:
        resolve_workers(value)  # checked here, resolved once the number of ranks is known
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qaclip_core", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate one model on one dataset")
    who = ev.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="registry name (see `python -m qaclip_core models`)")
    who.add_argument("--checkpoint", type=Path, help="a local checkpoint file")
    ev.add_argument("--arch", help="VISION@TEXT for --checkpoint (inferred from the weights when omitted)")
    ev.add_argument("--dataset", required=True, help="flickr30k-cn, muge, coco-cn, imagenet (or a fixture dataset)")
    ev.add_argument("--data-root", type=Path, required=True, help="${DATAPATH} holding datasets/, or the datasets folder")
    ev.add_argument("--split", help="split to evaluate (default: the dataset's published split)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ev.add_argument("--batch-size", type=int, default=64, help="images per batch")
    ev.add_argument("--text-batch-size", type=int, default=256, help="texts per batch")
    ev.add_argument("--num-workers", type=_workers, default="auto", help="image-decoding threads (default auto: one per core, at most 8)")
    ev.add_argument("--checkpoint-dir", type=Path, help="download folder for --model (default ~/.cache/qaclip/checkpoints)")
    ev.add_argument("--download", action="store_true", help="download the dataset when missing and downloadable")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--dump-predictions", type=Path, metavar="DIR", help="write predictions in the reference's jsonl format")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.add_argument("--compile", action="store_true", help="run the vision tower through torch.compile")
    ev.add_argument("--backend", default="pytorch", choices=["pytorch", "onnx"],
                    help="onnx: export into the cache and evaluate through ONNX Runtime (the 'onnx' extra)")
    sub.add_parser("models", help="list registry names")
    from .export.cli import add_export_parser

    add_export_parser(sub)
    return p


def _encoder(args):
    from .adapters import NativeEncoder, fetch_weights, load_encoder
    from .checkpoint import load_checkpoint
    from .hub import cache_root
    from .registry import get_card

    backend = None if args.backend == "pytorch" else args.backend
    if args.model:
        card = get_card(args.model)
        path = fetch_weights(card, download_root=args.checkpoint_dir or cache_root() / "checkpoints")
        return load_encoder(card, path, device=args.device, precision=args.precision, compile=args.compile,
                            backend_name=backend)
    if backend == "onnx":
        from .adapters.onnx import load_checkpoint_encoder

        return load_checkpoint_encoder(args.checkpoint, args.arch, device=args.device, precision=args.precision)
    model = load_checkpoint(args.checkpoint, args.arch, device=_device(args.device), precision=args.precision)
    return NativeEncoder(model, name=args.checkpoint.name, compile=args.compile)


def _device(name: str):
    from .checkpoint import resolve_device

    return resolve_device(name)


def _eval(args, shard) -> dict:
    from .data.catalog import get_dataset
    from .eval.runner import evaluate_card

    card = get_dataset(args.dataset)
    encoder = _encoder(args)
    out = evaluate_card(
        encoder, card, args.data_root, batch_size=args.batch_size, text_batch_size=args.text_batch_size,
        num_workers=resolve_workers(args.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
        download=args.download, progress=not args.quiet and shard.is_main, split=args.split, shard=shard,
    )
    if args.dump_predictions and shard.is_main:
        from .eval.retrieval import write_predictions

        if card.kind != "retrieval":
            raise QAClipError("--dump-predictions is for retrieval datasets")
        write_predictions(out.raw, args.dump_predictions, split=args.split or card.split)
    report = {k: float(v) for k, v in out.metrics.items()}
    report.update({f"num_{k}": v for k, v in out.counts.items()})
    report.update({"dataset": card.name, "model": out.model, "split": args.split or card.split,
                   "precision": args.precision, "device": str(encoder.device), "processes": shard.world})
    return report


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "models":
        from .registry import available_models

        print("\n".join(available_models()))
        return 0
    if args.command == "export-onnx":
        from .export.cli import run_export

        return run_export(args)
    from .distributed import finish, init_from_env, shard_device

    # under torchrun every rank encodes a share; rank 0 prints
    shard = init_from_env(args.device)
    args.device = shard_device(shard, args.device)
    try:
        report = _eval(args, shard)
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        finish(shard)
    if not shard.is_main:
        return 0
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for k, v in report.items():
            print(f"{k:>18}: {v}")
    return 0
