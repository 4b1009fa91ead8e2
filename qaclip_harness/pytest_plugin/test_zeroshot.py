"""Published zero-shot classification numbers (ImageNet, the ten ELEVATER datasets, fixture) as pytest cases."""

from __future__ import annotations

import pytest

from qaclip_harness.suite.cases import case_params


@pytest.mark.parametrize("case", case_params("zeroshot"))
def test_zeroshot(case, suite, request):
    """Top-1 (and top-5 where published) within the tolerance of expected/<dataset>.yaml (report-only and
    measured-only cases are measured and shown, never failed)."""
    suite.run_case(case, request.node)
