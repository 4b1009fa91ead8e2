"""Zero-shot classification: the prompt-ensemble classifier (built, cached) and the predictions dump."""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Union

import torch

from qaclip_harness.eval.distributed import SINGLE, Shard
from qaclip_harness.eval.features import encode_texts
from qaclip_harness.progress import Progress

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


# encoder -> {digest of (class names, prompts): classifier}; entries go with their encoder
_CLASSIFIERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_classifier(
    encoder,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    progress: Progress = False,
    shard: Shard = SINGLE,
    desc: str = "prompts",
) -> torch.Tensor:
    """:func:`build_classifier`, computed once per encoder and (class names, templates) in a process.

    Up to 100 classes x 183 prompts go through the packed text path in one pass; a second
    evaluation of the same model on the same dataset (another split, the CLI's prediction dump,
    a re-run in a notebook) reuses the result.
    """
    key = hashlib.sha256(
        json.dumps([list(classnames), [str(t) for t in templates]], ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    try:
        table = _CLASSIFIERS.setdefault(encoder, {})
    except TypeError:  # an encoder that cannot be weakly referenced: no cache
        table = {}
    if key not in table:
        table[key] = build_classifier(encoder, classnames, templates, batch_size, progress, shard, desc)
    return table[key]


def param_counts(encoder) -> dict[str, int]:
    """Parameter counts of the encoder's model, as the ELEVATER submission format lists them (empty if unknown)."""
    model = getattr(encoder, "model", None)
    if not isinstance(model, torch.nn.Module):
        return {}
    total = sum(p.numel() for p in model.parameters())
    visual = getattr(model, "visual", None) or getattr(model, "vision_model", None)
    counts = {"num_params": total, "num_backbone_params": total}
    if isinstance(visual, torch.nn.Module):
        counts["num_visual_params"] = sum(p.numel() for p in visual.parameters())
    return counts


def write_zeroshot_predictions(
    raw: dict, directory: str | Path, model_name: str, index: Sequence[int] | None = None
) -> Path:
    """``<directory>/<dataset folder>.json`` in the ELEVATER submission format the reference writes.

    Per image the softmax over classes of ``100 * cosine``, rounded to 6 decimals, in folder
    order or, when the dataset has an ``index.json`` (passed as ``index``), in that order.
    """
    probs = torch.as_tensor(raw["logits"]).float().softmax(dim=-1)
    if index is not None:
        probs = probs[torch.as_tensor(list(index), dtype=torch.long)]
    doc = {
        "model_name": model_name,
        "dataset_name": raw["folder"],
        "n_shot": 0,
        "num_trainable_params": 0,
        **raw.get("params", {}),
        "rnd_seeds": [0],  # zero-shot has no randomness; the format wants one list of predictions per seed
        "predictions": [[[round(float(x), 6) for x in row] for row in probs.tolist()]],
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from qaclip_harness.files import atomic_write_text

    return atomic_write_text(directory / f"{raw['folder']}.json", json.dumps(doc, ensure_ascii=False))
