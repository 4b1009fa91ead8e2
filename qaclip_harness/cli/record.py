"""``qaclip record``: measure model cards on dataset cards in a state you trust and write expected files the suite gates on.

Also the project's cards for every subcommand: ``--cards`` and ``--datasets`` (or ``QACLIP_CARDS``,
``QACLIP_DATASETS``) replace the keys of the ``[tool.qaclip]`` table of the nearest pyproject.toml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, cast

from qaclip_core.errors import QAClipError


def add_project_options(parser: argparse.ArgumentParser) -> None:
    """``--cards`` and ``--datasets``: a project's card files for this run (else its [tool.qaclip] table)."""
    parser.add_argument(
        "--cards",
        metavar="PATH",
        help="model card files or folders (os.pathsep-separated) for this run, instead of [tool.qaclip] cards "
        "of the nearest pyproject.toml (also QACLIP_CARDS)",
    )
    parser.add_argument(
        "--datasets",
        metavar="PATH",
        help="dataset card files or folders for this run, instead of [tool.qaclip] datasets (also QACLIP_DATASETS)",
    )


def load_project(args: argparse.Namespace, expected: bool = False) -> Any:
    """Read the project ([tool.qaclip], variables, ``--cards``/``--datasets``) and register its cards; returns it."""
    from qaclip_harness import project as proj

    overrides = proj.overrides_from_env()
    for key, flag in (("cards", "--cards"), ("datasets", "--datasets")):
        value = getattr(args, key, None)
        if value:
            overrides[key] = (value, flag)
    keys = proj.KEYS if expected else ("cards", "datasets")
    found = proj.load_project(Path.cwd(), overrides, keys=keys)
    proj.register(found)
    return found


def add_record_parser(sub: Any, checked: Callable[..., Callable[[str], object]], workers: Callable[[str], str]) -> None:
    """The ``record`` subcommand."""
    from qaclip_harness import options
    from qaclip_harness.record import RUNS

    rec = sub.add_parser(
        "record",
        help="evaluate model cards on dataset cards in a trusted state and write expected files "
        "(measured numbers, tolerances from measured noise, provenance)",
    )
    rec.add_argument("--model", action="append", required=True, metavar="CARD", help="a model card name (repeatable)")
    rec.add_argument(
        "--dataset", action="append", required=True, metavar="DATASET", help="a dataset card name (repeatable)"
    )
    rec.add_argument(
        "--out",
        type=checked(options.folder, "--out"),
        required=True,
        metavar="DIR",
        help="folder for the expected files, one <dataset>-<model>.yaml per pair (e.g. the folder [tool.qaclip] expected names)",
    )
    rec.add_argument("--force", action="store_true", help="record again over an existing file")
    rec.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"comma-separated runs (default {','.join(RUNS)}; fp32 is the recorded one, the others measure noise)",
    )
    rec.add_argument(
        "--data-root", type=checked(options.folder, "--data-root"), help="${DATAPATH} for built-in datasets"
    )
    rec.add_argument(
        "--checkpoint-dir",
        type=checked(options.folder, "--checkpoint-dir"),
        help="where hub checkpoints are found or downloaded (default ~/.cache/qaclip/checkpoints)",
    )
    rec.add_argument("--device", default="auto", type=checked(options.device, "--device"))
    rec.add_argument("--batch-size", type=checked(options.positive_int, "--batch-size"), default=64)
    rec.add_argument("--num-workers", type=workers, default="auto")
    rec.add_argument("--download", action="store_true", help="download a built-in dataset when missing")
    add_project_options(rec)


def run_record(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Record every (model, dataset) pair; exit 2 with one line on a user error, before or between pairs."""
    from qaclip_core.checkpoint import resolve_device
    from qaclip_core.pretrained import cache_root
    from qaclip_core.registry import get_card
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.data.loader import resolve_workers
    from qaclip_harness.environment import environment
    from qaclip_harness.fetch.datasets import resolve_dataset
    from qaclip_harness.options import new_output_folder
    from qaclip_harness.record import RUNS, RecordError, command_line, expected_doc, measure, write_recording

    try:
        runs = [r.strip() for r in args.runs.split(",") if r.strip()]
        unknown = [r for r in runs if r not in RUNS]
        if unknown:
            raise RecordError(f"--runs: unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
        load_project(args)
        cards = [get_card(m) for m in args.model]  # every name checked before any work
        datasets = [get_dataset(d) for d in args.dataset]
        out = cast(Path, new_output_folder(args.out, "--out"))  # a value gives a folder, never None
        if not args.force:
            taken = [out / f"{d.name}-{c.name}.yaml" for c in cards for d in datasets]
            taken = [p for p in taken if p.exists()]
            if taken:
                raise RecordError(f"{taken[0]} exists: numbers are recorded once; pass --force to record them again")
        device = str(resolve_device(args.device))
        workers = resolve_workers(args.num_workers)
        env = environment(device)
        for card in cards:
            checkpoint = _checkpoint(card, args.checkpoint_dir or cache_root() / "checkpoints")
            for dataset in datasets:
                root = args.data_root or cache_root() / "data"
                data = resolve_dataset(dataset, root, download=args.download)
                rec = measure(card, dataset, checkpoint, data, device, runs, args.batch_size, workers)
                path = write_recording(expected_doc(rec, env, command_line(argv)), out, force=args.force)
                base = rec.runs["fp32"]
                shown = ", ".join(f"{k} {v:.2f}" for k, v in base.items())
                print(f"{dataset.name}-{card.name}: {shown}")
                print(f"recorded to {path}")
    except QAClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _checkpoint(card: Any, checkpoint_dir: Path) -> Path:
    """The card's weights on disk (the embedded fixture's from the package, as calibrate reads them)."""
    from qaclip_harness.fetch.weights import fetch_weights

    if card.test_only and card.adapter == "native" and card.checkpoint is None:
        from qaclip_harness.fixture import packaged_checkpoint

        return packaged_checkpoint(card.name)
    return fetch_weights(card, download_root=checkpoint_dir)


__all__ = ["add_project_options", "add_record_parser", "load_project", "run_record"]
