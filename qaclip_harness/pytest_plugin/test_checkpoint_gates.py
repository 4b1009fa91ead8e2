"""Checkpoint-only gates for every registry model: parity-<model>, example-<model>, golden-<model>.

They need the model's checkpoint and nothing else (no dataset): the probe set ships with the
package. The logic lives in :mod:`qaclip_harness.gates`; this file fetches through the suite,
records every case in the report and turns a failed gate into a failed test with its table.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest

from qaclip_core.errors import DownloadError, QAClipError
from qaclip_core.registry import ModelCard, all_cards, get_card
from qaclip_harness.errors import MissingDependencyError
from qaclip_harness.report.tables import CaseResult
from qaclip_harness.suite.cases import expected_dir, suite_case
from qaclip_harness.suite.session import Suite

GATES = ("parity", "example", "golden")


def example_specs():
    """The README example's published probabilities (``$QACLIP_EXPECTED_DIR`` or expected/, read when called):
    ``api-example.yaml``, and beside it the reference's probabilities of the fixture models (``fixture-example.yaml``)."""
    return expected_dir() / "example" / "api-example.yaml"


def _gates_of(card: ModelCard) -> tuple:
    # A transformers-format copy is held against its .pt by parity-hf-<model> (benchmarks/test_parity_hf.py);
    # a parity-<copy> case would also share that id (parity-hf-<model>). Other backends (ZH-CLIP, a project's
    # own encoder) have no reference implementation to hold them against: their gates are example and golden.
    from qaclip_harness.backends.reference import REFERENCED_BACKENDS

    return tuple(g for g in GATES if not (g == "parity" and card.adapter not in REFERENCED_BACKENDS))


def gate_params() -> list:
    """``<gate>-<model>`` for every card, a model's gates next to each other."""
    return [
        pytest.param(
            gate,
            card.name,
            id=f"{gate}-{card.name}",
            marks=[pytest.mark.checkpoint_gate, pytest.mark.xdist_group(card.name), suite_case(gate, card.name, gate)],
        )
        for card in all_cards()
        for gate in _gates_of(card)
    ]


def _row(
    metric: str,
    cell: str,
    ok: bool,
    measured: float = 0.0,
    expected: float | None = None,
    tolerance: float | None = None,
) -> dict:
    delta = measured - expected if expected is not None else None
    return {
        "metric": metric,
        "measured": measured,
        "expected": expected,
        "tolerance": tolerance,
        "delta": delta,
        "ok": ok,
        "cell": cell,
    }


class GateCase:
    """One gate case: skips, errors and outcomes recorded in the suite's results."""

    def __init__(self, suite: Suite, item: pytest.Item, gate: str, card: ModelCard, precision: str):
        self.suite, self.item, self.gate, self.card = suite, item, gate, card
        self.base: dict[str, Any] = {"dataset": gate, "model": card.name, "kind": gate, "precision": precision}
        self.start = time.perf_counter()

    def skip(self, reason: str) -> NoReturn:
        """Record and skip with the first line of ``reason``."""
        reason = reason.splitlines()[0]
        self.suite.record(self.item, CaseResult(status="skipped", reason=reason, **self.base))
        pytest.skip(reason)

    def guarded(self, fn: Callable):
        """Run ``fn``; a missing optional package skips, a missing checkpoint skips (fails with --require-data), anything
        else is an error (a broken import inside the package included)."""
        try:
            return fn()
        except MissingDependencyError as e:
            self.skip(str(e))
        except DownloadError as e:
            if self.suite.options.require_data:
                reason = f"required but missing: {str(e).splitlines()[0]}"
                self.suite.record(self.item, CaseResult(status="error", reason=reason, **self.base))
                pytest.fail(f"{self.gate}-{self.card.name}: --require-data is set and {reason}", pytrace=False)
            self.skip(str(e))
        except QAClipError as e:  # bad input (a damaged golden store, a full disk): one message naming the file
            self.suite.record(self.item, CaseResult(status="error", reason=str(e).splitlines()[0], **self.base))
            pytest.fail(f"{self.gate}-{self.card.name}: {e}", pytrace=False)
        except Exception as e:
            self.suite.record(
                self.item, CaseResult(status="error", reason=f"{type(e).__name__}: {e}".splitlines()[0], **self.base)
            )
            raise

    def finish(self, ok: bool, rows: list[dict], measured: dict, table: str, device: str, reason: str = "") -> None:
        """Record the outcome; a failed gate fails the test with ``table``."""
        self.suite.record(
            self.item,
            CaseResult(
                status="passed" if ok else "failed",
                checks=rows,
                measured=measured,
                device=device,
                reason=reason,
                seconds=round(time.perf_counter() - self.start, 2),
                **self.base,
            ),
        )
        if not ok:
            pytest.fail(
                f"{self.gate}-{self.card.name} ({self.base['precision']}) fails its gate:\n{table}", pytrace=False
            )
        print(f"{self.gate}-{self.card.name}:\n{table}")


def _parity(suite: Suite, item: pytest.Item, card: ModelCard) -> None:
    from qaclip_core.checkpoint import resolve_device
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.backends.reference import reference_source
    from qaclip_harness.gates.features import EncoderSource
    from qaclip_harness.gates.parity import on_cuda, run_parity, strict_and_tf32
    from qaclip_harness.probe import load_probe_set

    case = GateCase(suite, item, "parity", card, "fp32")
    device = resolve_device(suite.device)
    probe = load_probe_set()
    path = case.guarded(lambda: suite.checkpoint_for(card))
    # the reference first, released before ours is loaded: one large model in memory at a time
    reference = case.guarded(lambda: reference_source(card, path, device=device, batch_size=suite.batch_size))
    ref = case.guarded(lambda: strict_and_tf32(reference, probe, on_cuda(device)))
    reference = None  # released before ours is loaded
    gc.collect()
    if suite.precision == "fp32":
        encoder = case.guarded(lambda: suite.encoder_for(card))
    else:  # the parity gate is an fp32 one whatever the suite's precision
        encoder = case.guarded(lambda: load_encoder(card, path, device=device, precision="fp32", compile=suite.compile))
    ours = case.guarded(lambda: strict_and_tf32(EncoderSource(encoder, suite.batch_size), probe, on_cuda(device)))
    report = case.guarded(lambda: run_parity(ours, ref))
    tol = report.tolerance
    rows = [
        _row(f"{t} max|Δ|", f"{d.max_abs:.1e}", d.max_abs <= tol.max_abs, d.max_abs, 0.0, tol.max_abs)
        for t, d in report.drifts.items()
    ]
    rows += [_row(f"{t} min cos", f"{d.min_cos:.9f}", True, d.min_cos) for t, d in report.drifts.items()]
    rows.append(
        _row(
            f"top-{tol.top_k}",
            "same" if not report.mismatches else f"{len(report.mismatches)} differ",
            not report.mismatches,
            float(len(report.mismatches)),
        )
    )
    case.finish(report.ok, rows, report.measured(), report.table(), str(device))


def _example(suite: Suite, item: pytest.Item, card: ModelCard) -> None:
    from qaclip_core.checkpoint import resolve_device
    from qaclip_harness.gates.example import (
        check_example,
        load_example_folder,
        run_encoder_example,
        run_native_example,
        spec_for,
    )
    from qaclip_harness.probe import load_probe_set

    case = GateCase(suite, item, "example", card, suite.precision)
    specs = example_specs()
    if not specs.is_file():
        case.skip(f"no example expectations {specs} in the expected folder (QACLIP_EXPECTED_DIR)")
    spec = spec_for(load_example_folder(specs.parent, specs.name), card.name)
    image = load_probe_set().image(spec.image)
    device = resolve_device(suite.device)
    path = case.guarded(lambda: suite.checkpoint_for(card))
    if card.adapter == "native":
        probs = case.guarded(lambda: run_native_example(path, card, image, spec.labels, device, suite.precision))
    else:
        probs = case.guarded(lambda: run_encoder_example(suite.encoder_for(card), image, spec.labels))
    report = check_example(spec, probs, suite.precision)
    rows = [
        _row(f"p{i}", f"{r['measured']:.4e}", r["ok"], r["measured"], r["expected"], r["tolerance"])
        for i, r in enumerate(report.rows)
    ]
    rows.append(_row("argmax", spec.labels[report.argmax], report.argmax_ok is not False))
    reason = "" if spec.expected_argmax is not None else "nothing published: probabilities reported"
    case.finish(
        report.ok, rows, {f"p{i}": p for i, p in enumerate(report.probabilities)}, report.table(), str(device), reason
    )


def _golden(suite: Suite, item: pytest.Item, card: ModelCard, golden_dir: str | None, save: bool) -> None:
    from qaclip_core.checkpoint import resolve_device
    from qaclip_harness.gates.features import EncoderSource, probe_features
    from qaclip_harness.gates.golden import (
        GoldenMissing,
        checkpoint_digest,
        compare_golden,
        golden_name,
        load_golden,
        save_golden,
    )
    from qaclip_harness.gates.tolerances import golden_tolerance
    from qaclip_harness.probe import load_probe_set

    case = GateCase(suite, item, "golden", card, suite.precision)
    if not golden_dir:
        case.skip(
            "no --golden-dir given (QACLIP_GOLDEN_DIR): golden features are recorded with --golden-save and compared from there"
        )
    device = resolve_device(suite.device)
    probe = load_probe_set()
    path = case.guarded(lambda: suite.checkpoint_for(card))
    current = case.guarded(lambda: probe_features(EncoderSource(suite.encoder_for(card), suite.batch_size), probe))
    if save:
        out = case.guarded(lambda: save_golden(golden_dir, card.name, suite.precision, device, current, path, probe))
        case.finish(
            True, [_row("recorded", out.name, True)], {}, f"recorded {out}", str(device), reason=f"recorded {out.name}"
        )
        return

    def load():
        try:
            return load_golden(golden_dir, card.name, suite.precision, device, probe)
        except GoldenMissing as e:
            case.skip(str(e))

    golden, entry = case.guarded(load)
    golden_file = Path(golden_dir) / golden_name(card.name, suite.precision, device)
    report = case.guarded(lambda: compare_golden(current, golden, golden_tolerance(suite.precision), golden_file))
    if entry.get("checkpoint_sha256") != checkpoint_digest(path):
        report.notes.append(
            f"note: the checkpoint differs from the one the goldens were recorded from "
            f"(sha256 {str(entry.get('checkpoint_sha256'))[:12]}..., now {checkpoint_digest(path)[:12]}...)"
        )
    report.notes.append(
        f"goldens recorded {entry.get('date')} with qaclip_core {entry.get('qaclip_core')} "
        f"({entry.get('git_commit')}), torch {entry.get('torch')}, {entry.get('device_name')}"
    )
    tol = report.tolerance
    rows = []
    for t, d in report.drifts.items():
        rows.append(_row(f"{t} max|Δ|", f"{d.max_abs:.1e}", d.max_abs <= tol.max_abs, d.max_abs, 0.0, tol.max_abs))
        rows.append(_row(f"{t} min cos", f"{d.min_cos:.7f}", d.min_cos >= tol.min_cos, d.min_cos, 1.0, 1 - tol.min_cos))
        agree, n = report.top1[t]
        rows.append(_row(f"{t} top-1", f"{agree}/{n}", True, agree / max(1, n)))
    case.finish(report.ok, rows, report.measured(), report.table(), str(device))


@pytest.mark.parametrize("gate, model", gate_params())
def test_checkpoint_gate(gate, model, suite, request):
    """parity-, example- and golden-<model> (see qaclip_harness.gates)."""
    card = get_card(model)
    if gate == "parity":
        _parity(suite, request.node, card)
    elif gate == "example":
        _example(suite, request.node, card)
    else:
        opt = request.config.getoption
        _golden(suite, request.node, card, opt("--golden-dir"), bool(opt("--golden-save")))
