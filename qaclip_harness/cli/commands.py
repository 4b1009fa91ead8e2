"""The ``qaclip`` command: ``qaclip eval ...`` for any checkpoint on any dataset folder, and the other subcommands.

Every option is checked when it is parsed (exit 2 with one line), and every output path before
any model is built, so a mistake never costs an evaluation. User errors (bad files, missing
data) print one ``error:`` line and exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from qaclip_core.errors import QAClipError
from qaclip_harness import options
from qaclip_harness.data.loader import resolve_workers


def _checked(check: Callable, option: str, **kw) -> Callable[[str], object]:
    """An argparse type from an ``options`` validator (argparse names the option itself)."""

    def convert(value: str):
        try:
            return check(value, option, **kw)
        except options.OptionError as e:
            raise argparse.ArgumentTypeError(f"{value!r}: {e.detail}") from None

    convert.__name__ = option.lstrip("-")  # argparse shows it in "invalid <name> value"
    return convert


def _workers(value: str) -> str:
    try:
        resolve_workers(value)  # checked here, resolved once the number of ranks is known
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r}: " + ("is a folder, expected a checkpoint file" if path.is_dir() else "no such file")
        )
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qaclip", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate one model on one dataset")
    who = ev.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="registry name (see `python -m qaclip_harness models`)")
    who.add_argument("--checkpoint", type=_existing_file, help="a local checkpoint file")
    ev.add_argument(
        "--arch",
        type=_checked(options.architecture, "--arch"),
        help="VISION@TEXT for --checkpoint (inferred from the weights when omitted)",
    )
    ev.add_argument(
        "--dataset",
        required=True,
        help="flickr30k-cn, muge, coco-cn, imagenet, an ELEVATER dataset (cifar-10, "
        "cifar100, dtd, eurosat, fer-2013, fgvc-aircraft, kitti-distance, mnist, patch-camelyon, voc-2007), "
        "a fixture dataset, or one of the project's dataset cards",
    )
    ev.add_argument(
        "--data-root",
        type=_checked(options.folder, "--data-root"),
        default=None,
        help="${DATAPATH} holding datasets/, or the datasets folder (required for built-in datasets; "
        "a project's dataset card names its own folder)",
    )
    ev.add_argument("--split", help="split to evaluate (default: the dataset's published split)")
    ev.add_argument(
        "--device", default="auto", type=_checked(options.device, "--device"), help="auto, cpu, cuda or cuda:N"
    )
    ev.add_argument("--precision", default="fp32", choices=list(options.PRECISIONS))
    ev.add_argument(
        "--batch-size", type=_checked(options.positive_int, "--batch-size"), default=64, help="images per batch"
    )
    ev.add_argument(
        "--text-batch-size",
        type=_checked(options.positive_int, "--text-batch-size"),
        default=256,
        help="texts per batch",
    )
    ev.add_argument(
        "--num-workers",
        type=_workers,
        default="auto",
        help="image-decoding threads (default auto: one per core, at most 8)",
    )
    ev.add_argument(
        "--checkpoint-dir",
        type=_checked(options.folder, "--checkpoint-dir"),
        help="download folder for --model (default ~/.cache/qaclip/checkpoints)",
    )
    ev.add_argument("--download", action="store_true", help="download the dataset when missing and downloadable")
    ev.add_argument(
        "--lock-file",
        type=_checked(options.output_file, "--lock-file"),
        help="checksum lock file: record the first verified download of each "
        "file, check later ones against it (also QACLIP_LOCK_FILE)",
    )
    ev.add_argument(
        "--verify", action="store_true", help="hash cached files in full instead of trusting their .sha256 records"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--dump-predictions",
        type=_checked(options.folder, "--dump-predictions"),
        metavar="DIR",
        help="write predictions into DIR: retrieval in the reference's jsonl format, zero-shot as "
        "<dataset folder>.json in the ELEVATER submission format (ordered by index.json when present)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.add_argument("--compile", action="store_true", help="run the vision tower through torch.compile")
    ev.add_argument(
        "--backend",
        default="pytorch",
        choices=["pytorch", "onnx"],
        help="onnx: export into the cache and evaluate through ONNX Runtime (the 'onnx' extra)",
    )
    from qaclip_harness.cli.record import add_project_options, add_record_parser

    add_project_options(ev)
    add_project_options(sub.add_parser("models", help="list registry names (the project's cards included)"))
    add_record_parser(sub, _checked, _workers)
    cal = sub.add_parser(
        "calibrate", help="measure how each case's metrics move with precision, TF32 and the reference"
    )
    cal.add_argument(
        "--out", type=_checked(options.output_file, "--out"), required=True, help="calibration file to write (YAML)"
    )
    cal.add_argument(
        "--allow-empty",
        action="store_true",
        help="write the calibration and exit 0 even when every selected case was skipped",
    )
    cal.add_argument(
        "--expected-dir",
        type=_checked(options.folder, "--expected-dir", must_exist=True),
        default=Path("expected"),
        help="folder of expected YAML files (default ./expected)",
    )
    cal.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="only cases whose id contains this (repeatable; default: every case with weights and data)",
    )
    cal.add_argument(
        "--data-root",
        type=_checked(options.folder, "--data-root"),
        default=None,
        help="${DATAPATH} (default ~/.cache/qaclip/data)",
    )
    cal.add_argument(
        "--checkpoint-dir",
        type=_checked(options.folder, "--checkpoint-dir"),
        default=None,
        help="where checkpoints are found or downloaded (default ~/.cache/qaclip/checkpoints)",
    )
    cal.add_argument("--device", default="auto", type=_checked(options.device, "--device"))
    cal.add_argument(
        "--runs",
        default=",".join(("fp32", "fp32-tf32", "fp16", "bf16", "reference-fp32")),
        help="comma-separated runs (fp32, fp32-tf32, fp16, bf16, reference-fp32)",
    )
    cal.add_argument("--batch-size", type=_checked(options.positive_int, "--batch-size"), default=64)
    cal.add_argument("--num-workers", type=_workers, default="auto")
    cmp = sub.add_parser("compare-reports", help="two report.json side by side: metric deltas and differing provenance")
    cmp.add_argument("a", type=Path, help="report.json (or its folder) of the first run")
    cmp.add_argument("b", type=Path, help="report.json (or its folder) of the second run")
    cmp.add_argument("--json", action="store_true", help="print the differences as one JSON object")
    hist = sub.add_parser(
        "history",
        help="every number over earlier runs: what moved since the run before, by how much "
        "of its tolerance; which queries changed rank",
    )
    hist.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run folders (report.json, pytest-benchmark *.json, predictions/<case>/) or folders of runs "
        "(qaclip keep-run); in this order, a folder's runs oldest first; the last run is the current one",
    )
    hist.add_argument(
        "--html",
        type=_checked(options.output_file, "--html"),
        metavar="FILE",
        help="write the current run's report with the history of every number drawn (e.g. reports/report.html)",
    )
    hist.add_argument(
        "--markdown",
        type=_checked(options.output_file, "--markdown"),
        metavar="FILE",
        help="also write the table as Markdown (for a job summary)",
    )
    hist.add_argument("--json", action="store_true", help="print every moved number as one JSON object")
    hist.add_argument(
        "--limit",
        type=_checked(options.positive_int, "--limit"),
        default=25,
        help="rows per section in the printed and Markdown tables (default 25)",
    )
    keep = sub.add_parser("keep-run", help="copy a run folder into a history folder (whole or not at all)")
    keep.add_argument("run", type=Path, metavar="RUN", help="the run folder (the suite's --report folder)")
    keep.add_argument(
        "store",
        type=_checked(options.output_folder_later, "STORE"),
        metavar="STORE",
        help="the history folder (created when missing)",
    )
    keep.add_argument(
        "--name",
        required=True,
        type=_checked(options.run_name, "--name"),
        help="the run's name, e.g. the commit (one folder name: no '/'); the folder is <time>-<name>",
    )
    keep.add_argument(
        "--keep-last",
        type=_checked(options.positive_int, "--keep-last"),
        default=None,
        help="then remove all but the newest N runs of the folder",
    )
    from qaclip_harness.cli.export_onnx import add_export_parser
    from qaclip_harness.cli.merge import add_merge_parser

    add_export_parser(sub)
    add_merge_parser(sub)
    return p


class UsageError(QAClipError):
    """A combination of options that cannot work (exit 2, like a parse error)."""


def _check_before_work(args, card) -> None:
    """Everything that can be known to fail before a model is built or an image read."""
    if args.arch and not args.checkpoint:
        raise UsageError("--arch applies to --checkpoint only; a --model's architecture comes from its card")
    if args.dump_predictions:
        if card.kind == "zeroshot":
            from qaclip_harness.data.catalog import dataset_dir
            from qaclip_harness.data.elevater import read_index

            read_index(dataset_dir(card, args.data_root))  # a malformed index.json fails here, not after the evaluation
        options.new_output_folder(args.dump_predictions, "--dump-predictions")
    if args.lock_file is None and os.environ.get("QACLIP_LOCK_FILE", "").strip():
        options.output_file(os.environ["QACLIP_LOCK_FILE"].strip(), "QACLIP_LOCK_FILE")  # the hub writes it
    # checkpoints of --model are downloaded into the package cache by default, ONNX exports always
    options.package_cache(write=False)
    if args.backend == "onnx":  # exports are written into the package cache
        options.cache_folder("onnx")


def _encoder(args):
    from qaclip_core.checkpoint import ArchitectureUnknownError, load_checkpoint
    from qaclip_core.pretrained import cache_root
    from qaclip_core.registry import get_card
    from qaclip_harness.backends import NativeEncoder, load_encoder
    from qaclip_harness.fetch.weights import fetch_weights

    backend = None if args.backend == "pytorch" else args.backend
    if args.model:
        card = get_card(args.model)
        path = fetch_weights(card, download_root=args.checkpoint_dir or cache_root() / "checkpoints")
        return load_encoder(
            card, path, device=args.device, precision=args.precision, compile=args.compile, backend_name=backend
        )
    if backend == "onnx":
        from qaclip_harness.backends.onnx import load_checkpoint_encoder

        return load_checkpoint_encoder(args.checkpoint, args.arch, device=args.device, precision=args.precision)
    try:
        model = load_checkpoint(args.checkpoint, args.arch, device=_device(args.device), precision=args.precision)
    except ArchitectureUnknownError as e:
        looks = f" (it looks like {e.guess})" if e.guess else ""
        raise UsageError(
            f"checkpoint {e.path}: cannot tell its architecture from the weights{looks}; "
            "give it with --arch VISION@TEXT, for example --arch ViT-B-16@RoBERTa-wwm-ext-base-chinese"
        ) from None
    return NativeEncoder(model, name=args.checkpoint.name, compile=args.compile)


def _device(name: str):
    from qaclip_core.checkpoint import resolve_device

    return resolve_device(name)


def _eval(args, shard) -> tuple:
    from qaclip_harness.cli.record import load_project
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.eval.runner import evaluate_card
    from qaclip_harness.fetch.datasets import resolve_dataset

    load_project(args)  # the project's cards and datasets ([tool.qaclip], --cards, --datasets) first
    card = get_dataset(args.dataset)
    if args.data_root is None and card.location is None:
        raise UsageError(
            f"--data-root is required for the built-in dataset {card.name} (${{DATAPATH}} holding datasets/)"
        )
    if args.model:
        from qaclip_core.registry import get_card

        get_card(args.model)  # an unknown name fails before anything else
    _check_before_work(args, card)
    data = resolve_dataset(card, args.data_root, download=args.download)  # fetched first: evaluation never downloads
    encoder = _encoder(args)
    out = evaluate_card(
        encoder,
        data,
        batch_size=args.batch_size,
        text_batch_size=args.text_batch_size,
        num_workers=resolve_workers(args.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
        progress=not args.quiet and shard.is_main,
        split=args.split,
        shard=shard,
    )
    report: dict[str, object] = {k: float(v) for k, v in out.metrics.items()}
    report.update({f"num_{k}": v for k, v in out.counts.items()})
    report.update(
        {
            "dataset": card.name,
            "model": out.model,
            "split": args.split or card.split,
            "precision": args.precision,
            "device": str(encoder.device),
            "processes": shard.world,
        }
    )
    prov = out.provenance
    report.update(
        {
            "data_fingerprint": prov.get("data_fingerprint"),
            "data_build": prov.get("build"),
            "split_check": prov.get("split_check"),
            "comparable": prov.get("comparable", True),
        }
    )
    return report, out, card


def _write_predictions(out, card, args) -> dict:
    """Retrieval: the reference's jsonl files; zero-shot: ``<dataset folder>.json`` as the ELEVATER server takes it."""
    if card.kind == "zeroshot":
        from qaclip_harness.data.elevater import read_index
        from qaclip_harness.eval.zeroshot import write_zeroshot_predictions

        index = read_index(out.raw["dataset_dir"], len(out.raw["targets"]))
        return {"predictions": write_zeroshot_predictions(out.raw, args.dump_predictions, out.model, index=index)}
    from qaclip_harness.metrics.retrieval import write_predictions

    return write_predictions(out.raw, args.dump_predictions, split=args.split or card.split)


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for k, v in report.items():
            print(f"{k:>18}: {v}")


def _calibrate(args) -> int:
    from qaclip_core.checkpoint import resolve_device
    from qaclip_core.pretrained import cache_root
    from qaclip_harness.calibrate import RUNS, calibrate, select_cases, write_calibration
    from qaclip_harness.expected import load_expected

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        print(
            f"error: --runs: unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}", file=sys.stderr
        )
        return 2
    try:
        cases = select_cases(load_expected(args.expected_dir), args.case)
        doc = calibrate(
            cases,
            args.checkpoint_dir or cache_root() / "checkpoints",
            args.data_root or cache_root() / "data",
            device=str(resolve_device(args.device)),
            runs=runs,
            batch_size=args.batch_size,
            num_workers=resolve_workers(args.num_workers),
        )
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for case_id, res in doc["cases"].items():
        print(
            f"{case_id}: largest |delta| from fp32: "
            + ", ".join(f"{run} {d:.3f}" for run, d in res["largest_abs_delta"].items())
        )
    for case_id, why in doc["skipped"].items():
        print(f"{case_id}: not calibrated: {why}")
    if not doc["cases"] and not args.allow_empty:
        print(
            f"error: all {len(doc['skipped'])} selected case(s) were skipped (weights or data missing, reasons above): "
            f"nothing was calibrated and {args.out} was not written; --allow-empty writes it anyway",
            file=sys.stderr,
        )
        return 1
    try:
        path = write_calibration(doc, args.out)
    except QAClipError as e:  # a full disk after the work: the numbers above stay on the screen
        print(f"error: the calibration above was measured, but {e}", file=sys.stderr)
        return 1
    print(f"calibration written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (130 after Ctrl-C, with one line instead of a traceback)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("qaclip: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare-reports":
        from qaclip_harness.report.diff import compare, load_report, render

        try:
            diff = compare(load_report(args.a), load_report(args.b))
        except QAClipError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        from qaclip_harness.report.escape import json_text, terminal

        print(json_text(diff, default=str) if args.json else terminal(render(diff, str(args.a), str(args.b))))
        return 0
    if args.command == "calibrate":
        return _calibrate(args)
    if args.command == "record":
        from qaclip_harness.cli.record import run_record

        return run_record(args, argv)
    if args.command in ("history", "keep-run"):
        from qaclip_harness.cli.history import run_history, run_keep

        return run_history(args) if args.command == "history" else run_keep(args)
    if args.command == "models":
        from qaclip_core.registry import all_cards, available_models
        from qaclip_harness.cli.record import load_project

        try:
            load_project(args)
        except QAClipError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

        print("\n".join(available_models()))
        # models evaluated through another backend (transformers formats): eval --model takes them too
        print(
            "\n".join(
                f"{c.name}  ({c.adapter}: {c.hub_repo or c.checkpoint})"
                for c in all_cards(include_test_only=False)
                if c.adapter != "native"
            )
        )
        return 0
    if args.command == "merge-reports":
        from qaclip_harness.cli.merge import run_merge

        return run_merge(args)
    if args.command == "export-onnx":
        from qaclip_harness.cli.export_onnx import run_export

        return run_export(args)
    from qaclip_harness.eval.distributed import finish, init_from_env, shard_device

    if args.lock_file:  # the hub reads both at call time (checked writable when parsed)
        os.environ["QACLIP_LOCK_FILE"] = str(args.lock_file.expanduser().resolve())
    if args.verify:
        os.environ["QACLIP_VERIFY"] = "1"
    # under torchrun every rank encodes a share; rank 0 prints
    shard = init_from_env(args.device)
    args.device = shard_device(shard, args.device)
    try:
        report, out, card = _eval(args, shard)
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        finish(shard)
    if not shard.is_main:
        return 0
    _print(report, args.json)  # the metrics first: a failure to write files below loses nothing
    if args.dump_predictions:
        try:
            paths = _write_predictions(out, card, args)
        except (OSError, QAClipError) as e:
            print(
                f"error: the metrics above were computed, but writing predictions to {args.dump_predictions} "
                f"failed: {e}",
                file=sys.stderr,
            )
            return 1
        if not args.json:
            for path in paths.values():
                print(f"{'written':>18}: {path}")
    return 0
