"""Zero-shot classification: prompt-ensemble classifier and top-k accuracy."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from ..tokenizer import CONTEXT_LENGTH, preprocess_text, tokenize

Template = Union[str, Callable[[str], str]]


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def build_classifier(
    encode_text: Callable[[torch.LongTensor], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: Union[str, torch.device] = "cpu",
    context_length: int = CONTEXT_LENGTH,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """[D, C] classifier: per class, the renormalised mean of its L2-normalised prompt features.

    ``batch_size`` is the number of prompts per ``encode_text`` call, rounded down to whole
    classes (at least one); ``None`` encodes one class per call, as the reference does.
    """
    if not classnames or not templates:
        raise ValueError(f"need classes and templates, got {len(classnames)} classes and {len(templates)} templates")
    n_t = len(templates)
    per_call = 1 if batch_size is None else max(1, batch_size // n_t)
    columns: List[torch.Tensor] = []
    for start in range(0, len(classnames), per_call):
        group = classnames[start : start + per_call]
        texts = [preprocess_text(_fill(t, c)) for c in group for t in templates]
        feats = encode_text(tokenize(texts, context_length=context_length).to(device)).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.view(len(group), n_t, -1).mean(dim=1)
        columns.append(mean / mean.norm(dim=-1, keepdim=True))
    return torch.cat(columns).t().contiguous()


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
