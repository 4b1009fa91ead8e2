"""Published retrieval numbers (Flickr30K-CN, MUGE, COCO-CN, fixture) as pytest cases."""

from __future__ import annotations

import pytest

from qaclip_harness.suite.cases import case_params


@pytest.mark.parametrize("case", case_params("retrieval"))
def test_retrieval(case, suite, request):
    """Recall@1/5/10 both ways within the tolerance of expected/<dataset>.yaml."""
    suite.run_case(case, request.node)
