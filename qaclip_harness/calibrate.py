"""Measured tolerances: how far each case's metrics move with precision, TF32 and the implementation.

For every expected case whose weights and data are on this machine, the evaluation runs in

- ``fp32``: fp32 with TF32 off (the baseline, as the published numbers);
- ``fp32-tf32``: fp32 with TF32 matmuls and convolutions on (what a GPU does by default; on a
  CPU TF32 does not exist and the run equals the baseline);
- ``fp16`` and ``bf16``: the model in reduced precision;
- ``reference-fp32``: the reference implementation (cn_clip 1.6.0) in fp32 with its own
  preprocessing and tokenizer, through the same data reading and metrics (native models only);

and the calibration file records every metric of every run, its delta from the baseline and the
largest delta per run. A tolerance in ``expected/`` should cover the largest measured delta of its
precision plus the rounding of the published value (0.05): see the README, "Measured tolerances".
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable

import torch
import yaml

from qaclip_core.errors import QAClipError
from qaclip_harness.data.catalog import DatasetOnDisk
from qaclip_harness.files import atomic_write_text, remove_stale_temporaries

RUNS = ("fp32", "fp32-tf32", "fp16", "bf16", "reference-fp32")


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for matmuls and cuDNN convolutions on or off, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _encoder(run: str, card, path: Path, device: str):
    from qaclip_harness.backends import load_encoder

    if run == "reference-fp32":
        from qaclip_harness.backends.reference import ReferenceEncoder

        if card.adapter != "native":
            return None
        return ReferenceEncoder(path, card.arch, name=f"{card.name} (cn_clip)", device=device)
    precision = "fp32" if run.startswith("fp32") else run
    return load_encoder(card, path, device=device, precision=precision)


def calibrate_case(
    case,
    card,
    checkpoint: Path,
    data: DatasetOnDisk,
    device: str = "cpu",
    runs: Sequence[str] = RUNS,
    batch_size: int = 64,
    num_workers: int = 0,
    progress=False,
) -> dict:
    """Every run of one case: metrics, deltas from the fp32 baseline, the largest delta per run."""
    from qaclip_harness.eval.runner import evaluate_card

    measured: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    for run in runs:
        encoder = _encoder(run, card, checkpoint, device)
        if encoder is None:
            notes[run] = f"not measured: the reference implementation has no {card.adapter} models"
            continue
        with tf32(run == "fp32-tf32"):
            out = evaluate_card(encoder, data, batch_size=batch_size, num_workers=num_workers, progress=progress)
        measured[run] = {k: float(v) for k, v in out.metrics.items()}
        del encoder
        gc.collect()
    if "fp32-tf32" in measured and not str(device).startswith("cuda"):
        notes["fp32-tf32"] = "TF32 exists on NVIDIA GPUs only: on this device it is the fp32 run"
    base = measured.get("fp32", {})
    deltas = {
        run: {k: v - base[k] for k, v in vals.items() if k in base} for run, vals in measured.items() if run != "fp32"
    }
    largest = {run: max((abs(d) for d in ds.values()), default=0.0) for run, ds in deltas.items()}
    return {
        "dataset": case.dataset,
        "model": case.model,
        "checkpoint": str(checkpoint),
        "published": {src: dict(vals) for src, vals in case.values.items()},
        "runs": measured,
        "deltas_from_fp32": deltas,
        "largest_abs_delta": largest,
        "notes": notes,
    }


def calibrate(
    cases: list,
    checkpoint_dir: Path,
    data_root: Path,
    device: str = "cpu",
    runs: Sequence[str] = RUNS,
    batch_size: int = 64,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Calibrate every case whose weights and data are present; the others are listed with the reason."""
    from qaclip_harness.environment import environment

    results: dict = {}
    skipped: dict = {}
    scratch = tempfile.TemporaryDirectory(prefix="qaclip-calibrate-")
    try:
        _calibrate_each(
            cases,
            checkpoint_dir,
            data_root,
            device,
            runs,
            batch_size,
            num_workers,
            log,
            results,
            skipped,
            Path(scratch.name),
        )
    finally:
        scratch.cleanup()
    return {"environment": environment(device), "runs": list(runs), "cases": results, "skipped": skipped}


def _calibrate_each(
    cases, checkpoint_dir, data_root, device, runs, batch_size, num_workers, log, results, skipped, scratch: Path
) -> None:
    from qaclip_core.errors import DownloadError
    from qaclip_core.registry import get_card
    from qaclip_harness.data.catalog import DatasetMissingError, get_dataset
    from qaclip_harness.errors import MissingDependencyError
    from qaclip_harness.fetch.datasets import resolve_dataset
    from qaclip_harness.fetch.weights import fetch_weights

    fixture_root: Path | None = None
    for case in cases:
        card, dataset = get_card(case.model), get_dataset(case.dataset)
        root = data_root
        if dataset.generator:  # the fixture's data is generated, its checkpoint ships with the package
            if fixture_root is None:
                from qaclip_harness.fixture.shapes import write_shapes_dataset

                fixture_root = scratch / "fixture-data"
                write_shapes_dataset(fixture_root)
            root = fixture_root
        try:
            data = resolve_dataset(dataset, root)
            if card.test_only and card.adapter == "native":
                from qaclip_harness.fixture import packaged_checkpoint

                path = packaged_checkpoint(card.name)
            elif card.test_only:  # the fixture's transformers-format copy: converted here, as the suite does
                from qaclip_harness.backends import backend
                from qaclip_harness.fixture.hf import write_converted

                backend(card.adapter).module.import_transformers()
                if not (scratch / "converted" / str(card.hub_repo)).is_dir():
                    write_converted(scratch / "converted")
                path = scratch / "converted" / str(card.hub_repo)
            else:
                path = fetch_weights(card, download_root=checkpoint_dir)
        except (DatasetMissingError, DownloadError, MissingDependencyError) as e:
            skipped[case.id] = str(e).splitlines()[0]
            continue
        log(f"calibrating {case.id} ({', '.join(runs)})")
        start = time.perf_counter()
        try:
            results[case.id] = calibrate_case(case, card, path, data, device, runs, batch_size, num_workers)
        except MissingDependencyError as e:
            skipped[case.id] = str(e).splitlines()[0]
            continue
        results[case.id]["seconds"] = round(time.perf_counter() - start, 1)


def write_calibration(doc: dict, path: Path) -> Path:
    """Write the calibration file (YAML)."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    header = (
        "# Measured by `python -m qaclip_harness calibrate` (qaclip_harness.calibrate): per case, the metrics of every\n"
        "# run, their deltas from the fp32 (TF32 off) run and the largest |delta| per run. A tolerance in\n"
        "# expected/ should cover the largest delta of its precision plus 0.05 for the published value's rounding.\n"
    )
    return atomic_write_text(path, header + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=110))


def select_cases(cases: list, patterns: Sequence[str]) -> list:
    """The cases whose id contains any of ``patterns`` (all when none are given)."""
    if not patterns:
        return list(cases)
    chosen = [c for c in cases if any(p in c.id for p in patterns)]
    if not chosen:
        raise QAClipError(f"no expected case id contains {', '.join(repr(p) for p in patterns)}")
    return chosen
