"""The gates' comparison: per-tower drift, and top-k swaps that are failures unless the scores nearly tie."""

from __future__ import annotations

import torch

from qaclip_harness.gates.drift import ranking_mismatches, top1_agreement, tower_drift

KEYS = ["a", "b", "c", "d", "e", "f"]


def test_drift_names_the_worst_item():
    a = torch.eye(3)
    b = a.clone()
    b[2, 1] = 0.01
    d = tower_drift("image", a, b, ["x", "y", "z"])
    assert d.worst == "z" and abs(d.max_abs - 0.01) < 1e-8 and d.min_cos < 1 and d.items == 3


def test_a_swap_of_near_ties_is_excused_and_a_real_swap_is_not():
    expected = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.1]], dtype=torch.float64)
    near = expected.clone()
    near[0, 3], near[0, 4] = 0.5, 0.6  # d and e swap ...
    tied = expected.clone()
    tied[0, 4] = 0.6 - 5e-7  # ... which the expected run scored 5e-7 apart
    assert ranking_mismatches(tied, near, 5, 1e-6, ["q"], KEYS, "t2i") == []
    (m,) = ranking_mismatches(expected, near, 5, 1e-6, ["q"], KEYS, "t2i")
    assert m.expected == ["a", "b", "c", "d", "e"] and m.got == ["a", "b", "c", "e", "d"] and abs(m.gap - 0.1) < 1e-9
    # an item entering the top 5 from outside is a mismatch too
    outside = expected.clone()
    outside[0, 5] = 0.55
    (m,) = ranking_mismatches(expected, outside, 5, 1e-6, ["q"], KEYS, "i2t")
    assert m.got[-1] == "f" and m.direction == "i2t"


def test_top1_agreement_counts_rows():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
    cur = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.5]])
    assert top1_agreement(ref, cur) == 2
