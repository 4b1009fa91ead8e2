"""Zero-shot classification: prompt-ensemble classifier and top-k accuracy."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Union

import torch

from ..distributed import SINGLE, Shard
from ..progress import Progress
from .features import encode_texts

Template = Union[str, Callable[[str], str]]


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def build_classifier(
    encoder,
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
    progress: Progress = False,
    shard: Shard = SINGLE,
    desc: str = "prompts",
) -> torch.Tensor:
    """[D, C] classifier: per class, the renormalised mean of its L2-normalised prompt features.

    ``encoder`` provides ``tokenize`` (with the model's text normalisation, for native models
    the reference's lower-casing and quote mapping) and ``encode_text``. Prompts of all classes
    are encoded together, batched by length; each prompt's features do not depend on its batch.
    """
    if not classnames or not templates:
        raise ValueError(f"need classes and templates, got {len(classnames)} classes and {len(templates)} templates")
    texts = [_fill(t, c) for c in classnames for t in templates]
    feats = encode_texts(encoder, texts, batch_size=batch_size, progress=progress, desc=desc, shard=shard)
    mean = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return (mean / mean.norm(dim=-1, keepdim=True)).t().contiguous()


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> Dict[str, float]:
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
