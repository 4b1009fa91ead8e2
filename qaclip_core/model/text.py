"""The BERT text tower (RBT3, RoBERTa-wwm-ext base and large), attention through SDPA.

Module names follow the published checkpoints (``bert.encoder.layer.N.attention.self.query``...);
the pooler is absent, as in the checkpoints' evaluation code. Random initial weights, when
wanted, come from :func:`qaclip_core.model.init.init_weights` for the whole CLIP model.
"""

from __future__ import annotations

from typing import cast

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
        out: torch.Tensor = self.LayerNorm(x)
        return out


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

    def forward_packed(self, x: torch.Tensor, layout: PackedLayout, queries: torch.Tensor) -> torch.Tensor:
        """Attend with real tokens packed as [T, D]; outputs only at the packed rows ``queries``."""
        n, length = layout.shape
        width = x.shape[-1]
        k, v = (layout.unpack(p(x)).view(n, length, self.heads, -1).transpose(1, 2) for p in (self.key, self.value))
        if queries is layout.all_rows:
            q = layout.unpack(self.query(x)).view(n, length, self.heads, -1).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask)
            return layout.pack(out.transpose(1, 2).reshape(n, length, width))
        # one query per sequence (its [CLS] token)
        q = self.query(x[queries]).view(n, 1, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask)
        return out.transpose(1, 2).reshape(n, width)


class _DenseNorm(nn.Module):
    """Linear, residual add, LayerNorm: BERT's attention-output and output sub-layers."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(x) + residual)."""
        out: torch.Tensor = self.LayerNorm(self.dense(x) + residual)
        return out


class BertAttention(nn.Module):
    """Self-attention plus its output sub-layer."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Post-norm attention sub-layer."""
        out: torch.Tensor = self.output(self.self(x, mask), x)
        return out

    def forward_packed(self, x: torch.Tensor, layout: PackedLayout, queries: torch.Tensor) -> torch.Tensor:
        """Packed variant: rows ``queries`` of the output only."""
        residual = x if queries is layout.all_rows else x[queries]
        out: torch.Tensor = self.output(self.self.forward_packed(x, layout, queries), residual)
        return out


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
        out: torch.Tensor = self.output(self.intermediate(x), x)
        return out

    def forward_packed(self, x: torch.Tensor, layout: PackedLayout, queries: torch.Tensor) -> torch.Tensor:
        """Packed variant: rows ``queries`` of the output only."""
        x = self.attention.forward_packed(x, layout, queries)
        out: torch.Tensor = self.output(self.intermediate(x), x)
        return out


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

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode [N, L] ids; ``attention_mask`` is 1 for real tokens and 0 for padding."""
        x = self.embeddings(ids)
        out: torch.Tensor = self.encoder(x, _additive_mask(attention_mask, x.dtype))
        return out

    def encode_first_token(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state of token 0 ([CLS]), [N, D]: the same values as ``forward(...)[:, 0]``.

        Padding is removed before every position-wise layer (projections, feed-forward,
        LayerNorm), which is where the time goes, and the last layer computes [CLS] only.
        Padded positions never reach a real token's output (their keys are masked), so the
        result does not change.
        """
        x = self.embeddings(ids)
        layout = PackedLayout(attention_mask.bool(), _additive_mask(attention_mask, x.dtype))
        h = layout.pack(x)
        layers = cast("list[BertLayer]", self.encoder.layer)
        for i, layer in enumerate(layers):
            h = layer.forward_packed(h, layout, layout.first_rows if i == len(layers) - 1 else layout.all_rows)
        return h


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASK_VALUE


class PackedLayout:
    """Where the real tokens of a padded [N, L] batch sit once packed into [T] rows."""

    def __init__(self, valid: torch.Tensor, mask: torch.Tensor):
        n, length = valid.shape
        self.shape = (n, length)
        self.mask = mask
        self.flat_index = valid.reshape(-1).nonzero().squeeze(1)  # packed row -> padded position
        self.all_rows = self.flat_index  # sentinel object: "every packed row"
        # packed row of each sequence's token 0 ([CLS])
        first = torch.full((n * length,), -1, dtype=torch.long, device=valid.device)
        first[self.flat_index] = torch.arange(len(self.flat_index), device=valid.device)
        self.first_rows = first.view(n, length)[:, 0]
        if bool((self.first_rows < 0).any()):
            raise ValueError("a sequence whose first token is padding cannot be encoded in packed form")

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, D] -> [T, D]."""
        return x.reshape(-1, x.shape[-1])[self.flat_index]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[T, D] -> [N, L, D] with zeros at padded positions."""
        n, length = self.shape
        out = x.new_zeros(n * length, x.shape[-1])
        out[self.flat_index] = x
        return out.view(n, length, -1)
