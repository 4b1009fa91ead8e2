"""Record a model's numbers once, in a state you trust, as an expected file the suite then gates on.

For each (model card, dataset card) pair the evaluation runs as ``calibrate`` runs it (no feature
cache: every number is computed by the code being trusted):

- ``fp32`` at the chosen batch size: the recorded value;
- ``fp32`` at a second batch size (7 unless the first is 7): other kernel blockings, other float order;
- ``fp32-tf32`` on CUDA (TF32 matmuls and convolutions, a GPU's default); on a CPU it does not exist;
- ``fp16`` and ``bf16``: the model in reduced precision;

and the expected file gets, per metric group and precision, a tolerance that is the measured spread
plus what the measurement cannot see, with its ``why``:

- ranks (R@k, top-k): fp32 spread + one item (``100 / queries`` points): a near-tie that another
  machine breaks the other way moves a metric by one item; a change that moves more is red;
  reduced precision: twice its measured distance from fp32 (other kernels round differently) plus
  the fp32 allowance;
- continuous values (``true_prob``): fp32 twice the spread, at least 0.001 points (the suite's
  pipeline lands 2.4e-6 to 8.1e-6 points from the reference on the fixture: a factor of ~100);
  reduced precision as above.

Provenance (checkpoint sha256, data fingerprint and counts, environment, every run's numbers) goes
into the file's ``recorded`` block; the suite notes a later run whose checkpoint or data differs.
The written file is read back by the expected-file parser before it is kept.
"""

from __future__ import annotations

import gc
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from qaclip_core.errors import QAClipError

RUNS = ("fp32", "fp32-batch", "fp32-tf32", "fp16", "bf16")
SOURCE = "recorded"
CONTINUOUS = ("true_prob",)
CONTINUOUS_FLOOR = 0.001


class RecordError(QAClipError, ValueError):
    """A recording that cannot be made or kept (one line)."""


@dataclass
class Recording:
    """One case measured in every run: what the expected file is written from."""

    dataset: Any  # DatasetCard
    card: Any  # ModelCard
    checkpoint: Path
    checkpoint_sha256: str
    runs: dict[str, dict[str, float]]  # run -> metric -> value
    counts: dict[str, int]
    provenance: dict[str, Any]
    batch_sizes: dict[str, int]
    notes: dict[str, str]


def noise_batch_size(batch_size: int) -> int:
    """The second fp32 run's batch size: 7 (a size no kernel blocks by), or 5 when the first is 7."""
    return 5 if batch_size == 7 else 7


def measure(
    card: Any,
    dataset: Any,
    checkpoint: Path,
    data: Any,
    device: str,
    runs: Sequence[str] = RUNS,
    batch_size: int = 64,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> Recording:
    """Evaluate one case in every run (no cache); the fp32 run is the one recorded."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.calibrate import tf32
    from qaclip_harness.eval.runner import evaluate_card
    from qaclip_harness.fetch.digests import sha256_of

    if "fp32" not in runs:
        raise RecordError("--runs must include fp32: it is the run whose numbers are recorded")
    measured: dict[str, dict[str, float]] = {}
    batches: dict[str, int] = {}
    notes: dict[str, str] = {}
    on_cuda = str(device).startswith("cuda")
    base_out = None
    for run in runs:
        if run == "fp32-tf32" and not on_cuda:
            notes[run] = "TF32 exists on NVIDIA GPUs only: not measured on this device"
            continue
        precision = "fp32" if run.startswith("fp32") else run
        batch = noise_batch_size(batch_size) if run == "fp32-batch" else batch_size
        log(f"{dataset.name}-{card.name}: {run} (batch {batch})")
        encoder = load_encoder(card, checkpoint, device=device, precision=precision)
        with tf32(run == "fp32-tf32"):
            out = evaluate_card(
                encoder, data, batch_size=batch, num_workers=num_workers, progress=False, split_policy="strict"
            )
        measured[run] = {k: float(v) for k, v in out.metrics.items()}
        batches[run] = batch
        if run == "fp32":
            base_out = out
        del encoder
        gc.collect()
    assert base_out is not None
    return Recording(
        dataset,
        card,
        checkpoint,
        card.sha256 or sha256_of(checkpoint),
        measured,
        dict(base_out.counts),
        dict(base_out.provenance),
        batches,
        notes,
    )


def _group(metric: str) -> str:
    return metric if metric in CONTINUOUS else metric.split("_")[0]


def _quantum(group: str, counts: dict[str, int], provenance: dict[str, Any]) -> tuple[float, str]:
    """Points one item is worth in ``group``, and the item in words."""
    texts, images = counts.get("texts", 0), counts.get("images", 0)
    i2t = int(provenance.get("i2t_queries") or images)
    if group == "t2i":
        return 100.0 / max(1, texts), f"one caption of {texts:,}"
    if group == "i2t":
        return 100.0 / max(1, i2t), f"one image of {i2t:,}"
    if group == "mean":
        q = max(100.0 / max(1, texts), 100.0 / max(1, i2t)) / 2
        return q, "half of one item (one near-tie moves at most the three recalls of its direction, a mean of six)"
    return 100.0 / max(1, images), f"one image of {images:,}"


def _spread(runs: dict[str, dict[str, float]], names: Sequence[str], metrics: Sequence[str]) -> float:
    base = runs["fp32"]
    return max((abs(runs[r][m] - base[m]) for r in names if r in runs for m in metrics), default=0.0)


def _round_up(value: float, digits: int = 6) -> float:
    return math.ceil(value * 10**digits - 1e-6) / 10**digits


def tolerances(rec: Recording, device_name: str = "this device") -> dict[str, dict[str, dict[str, Any]]]:
    """precision -> metric group -> {abs, why}, derived from the measured runs (module docstring)."""
    base = rec.runs["fp32"]
    groups: dict[str, list[str]] = {}
    for metric in base:
        groups.setdefault(_group(metric), []).append(metric)
    fp32_runs = [r for r in rec.runs if r.startswith("fp32") and r != "fp32"]
    measured_by = (
        ", ".join(f"{r} (batch {rec.batch_sizes[r]})" if r == "fp32-batch" else r for r in fp32_runs)
        or "no second fp32 run"
    )
    out: dict[str, dict[str, dict[str, Any]]] = {"fp32": {}}
    fp32_tol: dict[str, float] = {}
    for group, metrics in groups.items():
        spread = _spread(rec.runs, fp32_runs, metrics)
        if group in CONTINUOUS:
            tol = max(2 * spread, CONTINUOUS_FLOOR)
            why = (
                f"continuous, so not exact: {measured_by} moved it by {spread:.2g} points from the recorded fp32 "
                f"run (batch {rec.batch_sizes['fp32']}); twice that, at least {CONTINUOUS_FLOOR} points (the suite's "
                "pipeline lands within 1e-5 points of the reference across CPUs, a factor of ~100 left)"
            )
        else:
            q, item = _quantum(group, rec.counts, rec.provenance)
            tol = spread + q
            why = (
                f"measured: {measured_by} moved it by at most {spread:.4g} points from the recorded fp32 run "
                f"(batch {rec.batch_sizes['fp32']}); plus {item} ({q:.4g} points), for a near-tie another machine "
                "breaks the other way. A change that moves more items than that is red."
            )
        fp32_tol[group] = _round_up(tol)
        out["fp32"][group] = {"abs": fp32_tol[group], "why": why}
    for precision in ("fp16", "bf16"):
        if precision not in rec.runs:
            continue
        out[precision] = {}
        for group, metrics in groups.items():
            drift = _spread(rec.runs, [precision], metrics)
            out[precision][group] = {
                "abs": _round_up(2 * drift + fp32_tol[group]),
                "why": (
                    f"measured: the model in {precision} moved it by up to {drift:.4g} points from fp32 on "
                    f"{device_name}; twice that (other kernels round "
                    f"differently) plus the fp32 allowance ({fp32_tol[group]:.4g})"
                ),
            }
    return out


def expected_doc(rec: Recording, environment: dict[str, Any], command: str) -> dict[str, Any]:
    """The expected file of one recording (the format of qaclip_harness.expected, plus its ``recorded`` block)."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = rec.runs["fp32"]
    split = rec.provenance.get("split") or rec.dataset.split
    fingerprint = rec.provenance.get("data_fingerprint")
    return {
        "dataset": rec.dataset.name,
        "kind": rec.dataset.kind,
        "split": split,
        "sources": {
            SOURCE: {
                "cite": (
                    f"measured by `qaclip record` on {when} ({environment.get('device_name')}, torch "
                    f"{environment.get('torch')}, qaclip-core {environment.get('qaclip_core')}): checkpoint sha256 "
                    f"{rec.checkpoint_sha256[:16]}..., data fingerprint {str(fingerprint)[:16]}..."
                )
            }
        },
        "tolerance": tolerances(rec, str(environment.get("device_name") or "this device")),
        "models": {rec.card.name: {"gate": SOURCE, SOURCE: {k: round(v, 6) for k, v in base.items()}}},
        "recorded": {
            "date": when,
            "command": command,
            "model": rec.card.name,
            "checkpoint": {"path": str(rec.checkpoint), "sha256": rec.checkpoint_sha256},
            "data": {
                "fingerprint": fingerprint,
                "counts": rec.counts,
                "folder": rec.provenance.get("folder"),
                "split_check": rec.provenance.get("split_check"),
            },
            "batch_sizes": rec.batch_sizes,
            "runs": {run: {k: round(v, 6) for k, v in vals.items()} for run, vals in rec.runs.items()},
            "notes": rec.notes,
            "environment": environment,
        },
    }


HEADER = (
    "# Recorded by `qaclip record` (qaclip_harness/record.py); the suite gates {case} on these numbers.\n"
    "# Each tolerance is the spread measured below (runs) plus what one measurement cannot see, with its why.\n"
    "# Record again (qaclip record ... --force) only from a state you trust: this file is the reference.\n"
)


def write_recording(doc: dict[str, Any], out_dir: Path, force: bool = False) -> Path:
    """Write ``<dataset>-<model>.yaml`` into ``out_dir`` atomically, after reading it back as an expected file."""
    from qaclip_harness.expected import load_expected_paths
    from qaclip_harness.files import atomic_write_text

    model = doc["recorded"]["model"]
    case = f"{doc['dataset']}-{model}"
    target = Path(out_dir) / f"{case}.yaml"
    if target.exists() and not force:
        raise RecordError(f"{target} exists: numbers are recorded once; pass --force to record them again")
    text = HEADER.format(case=case) + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=110)
    check = Path(out_dir) / f".{case}.check.yaml"
    try:
        atomic_write_text(check, text)
        (parsed,) = load_expected_paths([check])
        failing = [c.metric for c in parsed.check(parsed.gate_values) if not c.ok]
        if failing:
            raise RecordError(f"{target}: the recorded values fail their own gate ({failing}): not written")
    finally:
        check.unlink(missing_ok=True)
    return atomic_write_text(target, text)


def command_line(argv: Sequence[str] | None) -> str:
    """The command as typed, for the provenance block."""
    return "qaclip " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
