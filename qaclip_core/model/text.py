"""The BERT text tower (RBT3, RoBERTa-wwm-ext base and large), attention through SDPA.

Module names follow the published checkpoints (``bert.encoder.layer.N.attention.self.query``...);
the pooler is absent, as in the checkpoints' evaluation code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig

# The published models were trained with this additive mask value (not -inf); keeping it makes
# even a degenerate all-padding row behave as the reference does.
MASK_VALUE = -10000.0


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed [N, L] token ids."""
        length = ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"token sequence of length {length} exceeds the model's "
                f"{self.position_embeddings.num_embeddings} positions"
            )
        pos = self.position_embeddings.weight[:length]
        # token type 0 everywhere, as in the reference
        x = self.word_embeddings(ids) + pos + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Separate query/key/value projections (checkpoint layout), fused attention kernel."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend over [N, L, D] with an additive [N, 1, 1, L] mask."""
        n, length, width = x.shape
        q, k, v = (p(x).view(n, length, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(n, length, width)


class _DenseNorm(nn.Module):
    """Linear, residual add, LayerNorm: BERT's attention-output and output sub-layers."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(x) + residual)."""
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Self-attention plus its output sub-layer."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Post-norm attention sub-layer."""
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    """The feed-forward expansion with exact (erf) GELU."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(dense(x))."""
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """One post-norm BERT encoder layer."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention then feed-forward."""
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """The stack of encoder layers."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run every layer."""
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nn.Module):
    """BERT without pooler: returns the last hidden states."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode [N, L] ids; ``attention_mask`` is 1 for real tokens and 0 for padding."""
        x = self.embeddings(ids)
        mask = (1.0 - attention_mask.to(x.dtype))[:, None, None, :] * MASK_VALUE
        return self.encoder(x, mask)
