"""Zero-shot top-k accuracy, as Chinese-CLIP's zero-shot script scores it (ties made deterministic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, keyed ``top1``, ``top5``...

    Classes are ranked by logit with ties going to the lower class index (a stable sort), so
    the result is deterministic. The reference ranks ``softmax(100 * logits)`` with
    ``torch.topk``: the argmax is the same except where two logits tie exactly (or round to
    the same probability), where its choice is unspecified.
    """
    logits = torch.as_tensor(logits).float()
    targets = torch.as_tensor(targets).long().to(logits.device)
    if logits.dim() != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("no samples to score")
    kmax = min(max(topk), logits.shape[1])
    order = torch.sort(logits, dim=1, descending=True, stable=True)[1][:, :kmax]
    correct = order.eq(targets[:, None])
    n = logits.shape[0]
    return {f"top{k}": float(correct[:, :k].any(dim=1).sum().item()) / n * 100 for k in topk}


def true_class_probability(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean softmax probability of the true class, in percent (the reference's ``softmax(100 * cosine)`` outputs).

    Unlike top-k accuracy it moves with any change of the scores, their scale included, so the
    fixture gates it (within measured float noise) to see the classifier and its templates.
    """
    logits = torch.as_tensor(logits).double()
    targets = torch.as_tensor(targets).long().to(logits.device)
    if logits.dim() != 2 or targets.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"logits must be [N, C] with N > 0 and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return float(logits.softmax(dim=1).gather(1, targets[:, None]).mean()) * 100
