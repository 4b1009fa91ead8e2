"""The fixture models against the reference's own probe features, stored in the repository (no cn_clip needed).

``reference-<model>``: our fp32 features (images through ``preprocess`` and through the batch
loader that dataset evaluation uses, captions through the encoder's tokenizer) against
cn_clip's, with the top-k ranking check; on the CPU (where the stored features were computed)
within the measured CPU noise of ``tolerances.yaml`` ``reference_cpu``, elsewhere at the parity
tolerance. ``precision-<model>-<p>``: the
model in bf16 and fp16 on the CPU against cn_clip's run in the same precision, within the
measured noise of ``tolerances.yaml`` ``reference_precision``. The features are written by
``tools/fixture_expected.py`` (and re-derived in CI); the logic is :mod:`qaclip_harness.gates.stored`.
"""

from __future__ import annotations

import time

import pytest
import torch

from qaclip_core.registry import get_card
from qaclip_harness.fixture import MODELS
from qaclip_harness.report.tables import CaseResult
from qaclip_harness.suite.cases import expected_dir, suite_case

PRECISIONS = ("bf16", "fp16")


def _params() -> list:
    params = []
    for name in MODELS:
        group = [pytest.mark.xdist_group(name)]
        params.append(
            pytest.param(name, "fp32", id=f"reference-{name}", marks=[*group, suite_case("reference", name, "parity")])
        )
        params += [
            pytest.param(
                name, p, id=f"precision-{name}-{p}", marks=[*group, suite_case(f"precision-{p}", name, "parity")]
            )
            for p in PRECISIONS
        ]
    return params


def _row(metric: str, cell: str, ok: bool, measured: float, tolerance=None) -> dict:
    return {
        "metric": metric,
        "measured": measured,
        "expected": 0.0 if tolerance is not None else None,
        "tolerance": tolerance,
        "delta": measured if tolerance is not None else None,
        "ok": ok,
        "cell": cell,
    }


@pytest.mark.parametrize("model, precision", _params())
def test_reference_features(model, precision, suite, request):
    """Our probe features against the reference's stored ones, in fp32 (parity) or a reduced precision (measured noise)."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.gates.features import EncoderSource, probe_features, tf32
    from qaclip_harness.gates.parity import compare_parity
    from qaclip_harness.gates.stored import (
        FOLDER,
        StoredFeaturesError,
        compare_stored,
        cpu_supports,
        load_stored,
        loader_image_features,
    )
    from qaclip_harness.gates.tolerances import parity_tolerance, precision_tolerance, reference_cpu_tolerance
    from qaclip_harness.probe import load_probe_set

    item, card = request.node, get_card(model)
    dataset = "reference" if precision == "fp32" else f"precision-{precision}"
    base = {"dataset": dataset, "model": model, "kind": "parity", "precision": precision}
    start = time.perf_counter()

    def record(status: str, **kw) -> CaseResult:
        return suite.record(
            item, CaseResult(status=status, seconds=round(time.perf_counter() - start, 2), **base, **kw)
        )

    folder = expected_dir() / FOLDER
    if not (folder / "MANIFEST.yaml").is_file():
        record(
            "skipped",
            reason=f"no stored reference features {folder}/MANIFEST.yaml in the expected folder (QACLIP_EXPECTED_DIR)",
        )
        pytest.skip(f"no stored reference features in {folder}")
    if precision != "fp32":
        unsupported = cpu_supports(getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision]))
        if unsupported:
            record("skipped", reason=unsupported)
            pytest.skip(unsupported)
    probe = load_probe_set()
    try:
        reference = load_stored(folder, model, precision, probe, card.sha256)
        path = suite.checkpoint_for(card)
        if precision == "fp32":
            encoder = (
                suite.encoder_for(card) if suite.precision == "fp32" else load_encoder(card, path, device=suite.device)
            )
        else:  # on the CPU, where the reference's features were computed
            encoder = load_encoder(card, path, device="cpu", precision=precision)
        with tf32(False):
            ours = probe_features(EncoderSource(encoder, suite.batch_size), probe)
            loader = loader_image_features(encoder, probe.images, suite.batch_size)
    except StoredFeaturesError as e:
        record("error", reason=str(e).splitlines()[0])
        raise
    if precision == "fp32":
        tol = parity_tolerance()
        # on the CPU, where the stored features were computed, the measured CPU noise; elsewhere the parity gate
        max_abs = reference_cpu_tolerance().max_abs if encoder.device.type == "cpu" else tol.max_abs
        parity = compare_parity(ours, reference, tol)
        stored = compare_stored(ours, reference, max_abs, f"{model} against cn_clip's stored fp32 features", loader)
        ok = stored.ok and parity.ok
        ranking = parity.table().splitlines()[len(parity.drifts) + 1 :]  # the lines after parity's own drift table
        table = "\n".join([stored.table(), *ranking])
        rows = [
            _row(f"{t} max|Δ|", f"{d.max_abs:.1e}", d.max_abs <= max_abs, d.max_abs, max_abs)
            for t, d in stored.drifts.items()
        ]
        rows.append(
            _row(
                f"top-{tol.top_k}",
                "same" if not parity.mismatches else f"{len(parity.mismatches)} differ",
                not parity.mismatches,
                float(len(parity.mismatches)),
            )
        )
        measured = {**stored.measured(), "topk_mismatches": float(len(parity.mismatches))}
    else:
        tol = precision_tolerance(precision, model)
        stored = compare_stored(
            ours,
            reference,
            tol.max_abs,
            f"{model} in {precision} (CPU) against cn_clip's stored {precision} features",
            loader,
        )
        # Two correct runs in bf16 differ about as much as either differs from fp32, so the features alone
        # cannot tell a run that silently stayed in another precision: the model must hold that precision.
        want = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])
        dtype_ok = encoder.dtype == want
        ok, measured = stored.ok and dtype_ok, stored.measured()
        table = stored.table() + f"\nmodel dtype {encoder.dtype}, expected {want}" + ("" if dtype_ok else "  FAIL")
        rows = [
            _row(f"{t} max|Δ|", f"{d.max_abs:.1e}", d.max_abs <= tol.max_abs, d.max_abs, tol.max_abs)
            for t, d in stored.drifts.items()
        ]
        rows.append(_row("dtype", str(encoder.dtype).replace("torch.", ""), dtype_ok, 0.0))
    record("passed" if ok else "failed", checks=rows, measured=measured, device=str(encoder.device))
    if not ok:
        pytest.fail(f"{item.callspec.id} fails its gate:\n{table}", pytrace=False)
    print(f"{item.callspec.id}:\n{table}")
