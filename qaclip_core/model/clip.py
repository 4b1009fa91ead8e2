"""The CLIP model: a vision tower, a BERT text tower and the two projections."""

from __future__ import annotations

import torch
from torch import nn

from .config import ArchConfig, arch_config
from .init import init_weights
from .text import BertModel
from .vision import ModifiedResNet, build_vision

PAD_ID = 0


def trim_padding(text: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """Drop the trailing columns that are padding (``pad_id``) in every row; masked features do not change."""
    used = (text != pad_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return text[:, :length]


class CLIP(nn.Module):
    """Chinese CLIP with the API of the QA-CLIP example."""

    def __init__(self, arch: ArchConfig, random_init: bool = True):
        super().__init__()
        self.arch = arch
        self.visual = build_vision(arch.vision)
        self.bert = BertModel(arch.text)
        self.text_projection = nn.Parameter(torch.empty(arch.text.hidden_size, arch.vision.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        if random_init:
            init_weights(self)
        self.text_fast_path = True

    def use_fast_paths(self, enabled: bool = True) -> CLIP:
        """Switch the exact shortcuts (packed text, token-0-only last vision layer) on or off.

        Off, the model computes every token as the reference does: the features agree within
        float rounding (tested), only the work differs. Returns the model.
        """
        self.text_fast_path = enabled
        if isinstance(self.visual, ModifiedResNet):
            self.visual.attnpool.first_query_only = enabled
        else:
            self.visual.first_token_only = enabled
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (inputs are cast to it)."""
        return self.visual.conv1.weight.dtype

    @property
    def image_size(self) -> int:
        """Input resolution of the vision tower."""
        return self.arch.vision.image_size

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space."""
        return self.arch.vision.embed_dim

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features, [N, embed_dim]."""
        out: torch.Tensor = self.visual(image.to(self.dtype))
        return out

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features from [N, L] token ids, [N, embed_dim]."""
        if not self.text_fast_path:
            out: torch.Tensor = self.bert(text, attention_mask=text != PAD_ID)[:, 0, :] @ self.text_projection
            return out
        text = trim_padding(text)
        mask = text != PAD_ID
        if bool(mask[:, 0].all()):
            cls = self.bert.encode_first_token(text, attention_mask=mask)
        else:  # a row starting with padding (not produced by tokenize): plain path
            cls = self.bert(text, attention_mask=mask)[:, 0, :]
        return cls @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the logit scale (exp)."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return image_features, text_features, self.logit_scale.exp()

    def get_similarity(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities: (logits_per_image [N_img, N_txt], logits_per_text)."""
        image_features, text_features, scale = self(image, text)
        logits_per_image = scale * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def create_model(arch: str, random_init: bool = True) -> CLIP:
    """A model of architecture ``VISION@TEXT``, in fp32, in eval mode, randomly initialised.

    ``random_init=False`` leaves the parameters unset, for a model about to load a checkpoint.
    """
    return CLIP(arch_config(arch), random_init=random_init).eval()


def is_resnet(model: CLIP) -> bool:
    """Whether the vision tower is a ModifiedResNet."""
    return isinstance(model.visual, ModifiedResNet)
