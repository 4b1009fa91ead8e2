"""parity-hf-<model>: the transformers-format folder of a checkpoint gives the features of its original .pt.

One case per card of the ChineseCLIP backend with the reference protocol and an ``original``
(``qaclip_harness/cards/chineseclip.yaml``; the fixture's copy in ``cards/fixture.yaml``): both
formats are fetched (or found) like every checkpoint of the suite, loaded in fp32 on the suite's
device, fed the same probe pixels and token ids, and their normalised features compared with
the tolerance of ``benchmarks/parity_hf.yaml``. The result is recorded in the report.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import yaml

from qaclip_core.errors import DownloadError
from qaclip_core.registry import all_cards, get_card
from qaclip_harness.errors import MissingDependencyError
from qaclip_harness.report.tables import CaseResult
from qaclip_harness.suite.cases import suite_case

TOLERANCE = yaml.safe_load((Path(__file__).parent / "parity_hf.yaml").read_text(encoding="utf-8"))["tolerance"]["fp32"]
PRECISION = "fp32"  # the formats are compared at the published numbers' precision, whatever --precision says


def probe():
    """The inputs both formats are compared on (one place to point at a richer probe set)."""
    from qaclip_harness.gates.format_parity import probe_inputs

    return probe_inputs()


def _cards() -> list:
    return [
        pytest.param(
            c,
            id=f"parity-hf-{c.original}",
            marks=[pytest.mark.xdist_group(c.original), suite_case("parity-hf", c.original, "parity")],
        )
        for c in all_cards()
        if c.adapter == "chineseclip" and c.preprocessing == "reference" and c.original
    ]


def _record(suite, item, card, status: str, **kw) -> CaseResult:
    result = CaseResult(
        dataset="parity-hf", model=card.original, kind="parity", status=status, precision=PRECISION, **kw
    )
    return suite.record(item, result)


def _features(suite, card, images, captions):
    """(pixels, tokens, image features, text features) of ``card`` on the probe; the model is released after."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.gates.format_parity import encode_probe

    encoder = load_encoder(card, suite.checkpoint_for(card), device=suite.device, precision=PRECISION)
    try:
        return encode_probe(encoder, images, captions), str(encoder.device)
    finally:
        del encoder
        gc.collect()


@pytest.mark.parametrize("card", _cards())
def test_parity_hf(card, suite, request):
    """Normalised image and text features of both formats within the tolerance of parity_hf.yaml."""
    original = get_card(card.original)
    try:
        # the folder first: without transformers this fails at once, before a large .pt is fetched
        suite.checkpoint_for(card)
        suite.checkpoint_for(original)
    except (DownloadError, MissingDependencyError) as e:
        reason = str(e).splitlines()[0]
        _record(suite, request.node, card, "skipped", reason=reason)
        pytest.skip(reason)
    images, captions = probe()
    try:
        (p_hf, t_hf, img_hf, txt_hf), device = _features(suite, card, images, captions)
        (p_pt, t_pt, img_pt, txt_pt), _ = _features(suite, original, images, captions)
        assert p_hf.equal(p_pt) and t_hf.equal(t_pt), "both protocols must give the same pixels and tokens"
    except Exception as e:
        _record(suite, request.node, card, "error", reason=f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    tol = float(TOLERANCE["abs"])
    measured = {
        "image_max_abs_diff": float((img_hf - img_pt).abs().max()),
        "text_max_abs_diff": float((txt_hf - txt_pt).abs().max()),
    }
    checks = [
        {"metric": k, "measured": v, "expected": 0.0, "tolerance": tol, "delta": v, "ok": v <= tol}
        for k, v in measured.items()
    ]
    ok = all(c["ok"] for c in checks)
    _record(
        suite,
        request.node,
        card,
        "passed" if ok else "failed",
        device=device,
        checks=checks,
        measured=measured,
        counts={"images": len(images), "texts": len(captions)},
    )
    if not ok:
        pytest.fail(
            f"parity-hf-{card.original}: {card.hub_repo} and {original.filename} differ beyond {tol:g}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in measured.items()),
            pytrace=False,
        )
