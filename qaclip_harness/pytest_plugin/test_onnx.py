"""ONNX deployment cases: ``onnx-parity-<model>`` for every qaclip_core model, and the README example as published for ONNX.

``onnx-parity-<model>`` exports the model's checkpoint into the cache, runs it with ONNX Runtime
(the execution provider of --device) and holds its features against the PyTorch model's on the
same probe inputs, in --precision, at batch sizes 1, 7 and 64: the gates are in
``qaclip_harness/export/parity.yaml``. Without the ``onnx`` extra every case skips with one line.
The MUGE rows published for ONNX fp16 are reproduction cases of ``expected/muge-onnx.yaml``
(benchmarks/test_retrieval.py); they and the example below run with --backend onnx --precision fp16.
"""

from __future__ import annotations

import time

import pytest
import torch

from qaclip_core.errors import DownloadError
from qaclip_core.registry import all_cards, get_card
from qaclip_harness.errors import ExportParityError, MissingDependencyError, UnsupportedError
from qaclip_harness.report.tables import CaseResult
from qaclip_harness.suite.cases import case_params, suite_case


def _parity_params() -> list:
    return [
        pytest.param(
            card.name,
            id=f"onnx-parity-{card.name}",
            marks=[pytest.mark.xdist_group(card.name), suite_case("onnx-parity", card.name, "parity")],
        )
        for card in all_cards()
        if card.adapter == "native"
    ]


SKIPPABLE = (DownloadError, MissingDependencyError, UnsupportedError)


def _skip(suite, item, base: dict, err: BaseException) -> None:
    reason = str(err).splitlines()[0]
    suite.record(item, CaseResult(status="skipped", reason=reason, **base))
    pytest.skip(reason)


@pytest.mark.parametrize("model", _parity_params())
def test_onnx_parity(model, suite, request):
    """ONNX Runtime features within the parity gates of PyTorch's, and the same top-5 rankings except at near-ties."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.export.deps import require
    from qaclip_harness.export.parity import compare

    card = get_card(model)
    base = {
        "dataset": "onnx-parity",
        "model": card.name,
        "kind": "parity",
        "precision": suite.precision,
        "backend": "onnx",
    }
    start = time.perf_counter()
    try:
        require()
        path = suite.checkpoint_for(card)
        ours = suite.encoder_for(card, backend="onnx")
        reference = load_encoder(card, path, device=suite.device, precision=suite.precision)
    except SKIPPABLE as e:
        _skip(suite, request.node, base, e)
    except ExportParityError as e:  # the export was checked against the eager model when made, and refused
        suite.record(request.node, CaseResult(status="failed", reason=str(e).splitlines()[0], **base))
        pytest.fail(str(e), pytrace=False)
    report = compare(ours, reference, suite.precision, model=card.name)
    result = CaseResult(
        status="passed" if report.ok else "failed",
        device=str(ours.device),
        checks=report.metric_rows(),
        seconds=round(time.perf_counter() - start, 2),
        **base,
    )
    suite.record(request.node, result)
    if not report.ok:
        pytest.fail(report.table(), pytrace=False)


def _logit_scale(encoder) -> float:
    scale = getattr(encoder, "logit_scale", None)
    if scale is None:  # the native encoder keeps it on its model, as a log
        scale = encoder.model.logit_scale.detach().float().exp()
    return float(scale)


@pytest.mark.parametrize("case", case_params("probabilities"))
def test_example_probabilities(case, suite, request):
    """Label probabilities of the README example within the tolerance of expected/readme-example-onnx.yaml."""
    import yaml
    from PIL import Image

    from qaclip_harness.probe import PROBE_DIR
    from qaclip_harness.tensors import normalise

    card = get_card(case.model)
    base = {
        "dataset": case.dataset,
        "model": case.model,
        "kind": case.kind,
        "precision": suite.precision,
        "backend": suite.backend,
        "variant": case.variant,
    }
    suite.skip_unless_met(request.node, case)
    example = yaml.safe_load(case.path.read_text(encoding="utf-8"))["example"]
    try:
        encoder = suite.encoder_for(card)
    except SKIPPABLE as e:
        _skip(suite, request.node, base, e)
    with Image.open(PROBE_DIR / "images" / example["image"]) as im:
        pixels = encoder.preprocess(im).unsqueeze(0)
    with torch.inference_mode():
        image = normalise(encoder.encode_image(pixels))
        text = normalise(encoder.encode_text(encoder.tokenize(example["labels"])))
    probs = (_logit_scale(encoder) * image @ text.T).softmax(dim=-1)[0]
    measured = {f"prob_{label}": 100.0 * float(p) for label, p in zip(example["labels"], probs)}
    checks = case.check(measured, suite.precision)
    rows = [
        {
            "metric": c.metric,
            "measured": c.measured,
            "expected": c.expected,
            "tolerance": c.tolerance,
            "delta": c.delta,
            "ok": c.ok,
            "format": ".3f",
        }
        for c in checks
    ]
    result = CaseResult(
        status="passed" if all(r["ok"] for r in rows) else "failed",
        device=str(encoder.device),
        checks=rows,
        measured=measured,
        **base,
    )
    suite.record(request.node, result)
    if result.status != "passed":
        from qaclip_harness.report.tables import failure_table

        pytest.fail(f"{case.id} is outside tolerance:\n" + failure_table(checks), pytrace=False)
