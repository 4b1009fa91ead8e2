"""Random ZH-CLIP folders in the model's own layout, written without the backend's model class.

The state dict is assembled from transformers' own ``CLIPVisionModel`` (its ``vision_model``) and
``BertModel`` (pooler included, as ``AutoModel`` builds it), with the projection heads spelled out by
the key names and shapes the ZH-CLIP repository documents (``visual_projection.{weight,bias}``,
``text_projection.{0,2}.weight``), so a wrong name or shape in the backend cannot agree with itself.
Every tensor is drawn (tests/random_weights.py): no LayerNorm left at 1/0, no bias at zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tests.random_weights import randomise_

RES = 32
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": RES,
    "patch_size": 8,
    "hidden_act": "gelu",
}
TEXT = {
    "hidden_size": 40,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 96,
    "type_vocab_size": 2,
}
JOINT = 24  # the text head's hidden width is (40 + 24) // 2 = 32


def zhclip_state_dict(tf: Any, vision: dict, text: dict, joint: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a ZH-CLIP model of this shape, drawn at random, under the repository's key names."""
    from qaclip_core.tokenizer import VOCAB_PATH

    vocab = len(Path(VOCAB_PATH).read_text(encoding="utf-8").splitlines())
    tower = tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision))
    visual = randomise_(getattr(tower, "vision_model", tower), seed=seed)  # the transformer (4.x nests it)
    bert = randomise_(tf.BertModel(tf.BertConfig(vocab_size=vocab, **text)), seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    vw, tw = vision["hidden_size"], text["hidden_size"]
    hidden = (tw + joint) // 2
    sd = {f"vision_model.{k}": v for k, v in visual.state_dict().items()}
    sd.update({f"text_model.{k}": v for k, v in bert.state_dict().items()})
    sd["visual_projection.weight"] = torch.randn(joint, vw, generator=g) / vw**0.5
    sd["visual_projection.bias"] = 0.2 * torch.randn(joint, generator=g)
    sd["text_projection.0.weight"] = torch.randn(hidden, tw, generator=g) / tw**0.5
    sd["text_projection.2.weight"] = torch.randn(joint, hidden, generator=g) / hidden**0.5
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_zhclip_folder(
    tf: Any,
    out: Path,
    vision: dict = VISION,
    text: dict = TEXT,
    joint: int = JOINT,
    seed: int = 0,
    weights: str = "model.safetensors",
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A complete ZH-CLIP folder: config.json, the weights, CLIPImageProcessor's config and the BERT vocabulary."""
    from qaclip_core.tokenizer import VOCAB_PATH

    out.mkdir(parents=True, exist_ok=True)
    sd = state if state is not None else zhclip_state_dict(tf, vision, text, joint, seed)
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(out / weights))
    else:
        torch.save(sd, out / weights)
    vocab = len(Path(VOCAB_PATH).read_text(encoding="utf-8").splitlines())
    config = {
        "architectures": ["ZhCLIPModel"],
        "model_type": "zhclip",
        "hidden_size": joint,
        "vision_config": {**vision, "model_type": "clip_vision_model"},
        "text_config": {**text, "vocab_size": vocab, "model_type": "bert"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    shutil.copyfile(VOCAB_PATH, out / "vocab.txt")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}),
        encoding="utf-8",
    )
    res = vision["image_size"]
    tf.CLIPImageProcessor(size={"shortest_edge": res}, crop_size={"height": res, "width": res}).save_pretrained(out)
    return out
