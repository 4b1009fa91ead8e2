"""Vision towers built from their JSON configs: CLIP's attention-pooled ResNet and the ViT.

The checkpoint format fixes the module and parameter names (``visual.layer2.0.downsample.1``,
``visual.transformer.resblocks.3.mlp.c_fc``...); everything else is this project's. A ResNet is
assembled from a :class:`ResNetPlan` computed from its config (stem convolutions, then one
:class:`BlockSpec` per bottleneck, channels chained through the plan rather than through a
running counter); a ViT from its config's width, depth and patch size. Parameters are created
empty and filled by :func:`qaclip_core.model.init.init_weights` when a random model is
wanted; a model about to receive a checkpoint skips that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

EXPANSION = 4  # a bottleneck's output has 4x its inner width
STEM_POOL = 2  # the stem ends with a 2x2 average pool
TOTAL_DOWNSAMPLE = 32  # stem (strided convolution, pool) x4, then stride 2 in stages 2-4


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (the published ViTs were trained so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in fp32 and cast back."""
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU that CLIP's ViT was trained with: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


# --------------------------------------------------------------------------------------------
# ResNet


@dataclass(frozen=True)
class ConvSpec:
    """One convolution followed by BatchNorm (no bias: the BatchNorm supplies it)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1


@dataclass(frozen=True)
class BlockSpec:
    """One bottleneck: 1x1 reduce, 3x3, (average pool when strided), 1x1 expand."""

    in_channels: int
    width: int
    stride: int

    @property
    def out_channels(self) -> int:
        """Channels leaving the block."""
        return self.width * EXPANSION

    @property
    def convs(self) -> tuple[ConvSpec, ConvSpec, ConvSpec]:
        """The three convolutions of the residual branch."""
        return (
            ConvSpec(self.in_channels, self.width, 1),
            ConvSpec(self.width, self.width, 3),
            ConvSpec(self.width, self.out_channels, 1),
        )

    @property
    def needs_projection(self) -> bool:
        """Whether the shortcut must change resolution or channels."""
        return self.stride > 1 or self.in_channels != self.out_channels


@dataclass(frozen=True)
class ResNetPlan:
    """Every layer of a ModifiedResNet, derived from its config."""

    stem: tuple[ConvSpec, ...]
    stages: tuple[tuple[BlockSpec, ...], ...]
    pool_tokens: int  # spatial positions seen by the attention pool
    pool_width: int
    heads: int
    output_dim: int


def resnet_plan(cfg: VisionConfig) -> ResNetPlan:
    """The layers of the ResNet ``cfg`` describes.

    The stem halves the width twice (three 3x3 convolutions, the first strided); stage ``i``
    has inner width ``width * 2**i`` and, from the second stage on, starts with stride 2.
    """
    if not isinstance(cfg.layers, tuple):
        raise ValueError(
            f"vision config {cfg.name!r}: a ResNet's layers must be a list of stage depths, got {cfg.layers!r}"
        )
    base = cfg.width
    stem = (ConvSpec(3, base // 2, 3, stride=2), ConvSpec(base // 2, base // 2, 3), ConvSpec(base // 2, base, 3))
    stages: list[tuple[BlockSpec, ...]] = []
    channels = stem[-1].out_channels
    for index, depth in enumerate(cfg.layers):
        width = base * 2**index
        first = BlockSpec(channels, width, stride=1 if index == 0 else 2)
        rest = [BlockSpec(first.out_channels, width, stride=1)] * (depth - 1)
        stages.append((first, *rest))
        channels = first.out_channels
    grid = cfg.image_size // TOTAL_DOWNSAMPLE
    return ResNetPlan(
        stem=stem,
        stages=tuple(stages),
        pool_tokens=grid * grid,
        pool_width=channels,
        heads=cfg.heads,
        output_dim=cfg.embed_dim,
    )


def _add_conv_bn(owner: nn.Module, specs: Sequence[ConvSpec]) -> int:
    """Register ``conv1, bn1, conv2, bn2, ...`` on ``owner`` (the checkpoint's names); returns how many."""
    for number, spec in enumerate(specs, start=1):
        owner.add_module(
            f"conv{number}",
            nn.Conv2d(
                spec.in_channels,
                spec.out_channels,
                spec.kernel,
                stride=spec.stride,
                padding=spec.kernel // 2,
                bias=False,
            ),
        )
        owner.add_module(f"bn{number}", nn.BatchNorm2d(spec.out_channels))
    return len(specs)


def _conv_bn_pairs(owner: nn.Module, count: int) -> list[tuple[nn.Module, nn.Module]]:
    return [(getattr(owner, f"conv{n}"), getattr(owner, f"bn{n}")) for n in range(1, count + 1)]


class Shortcut(nn.Module):
    """The projected shortcut of a bottleneck: average pool, 1x1 convolution, BatchNorm.

    The convolution and the BatchNorm are registered as ``0`` and ``1``: the checkpoint's names.
    """

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.pool = nn.AvgPool2d(spec.stride) if spec.stride > 1 else nn.Identity()
        self.add_module("0", nn.Conv2d(spec.in_channels, spec.out_channels, 1, bias=False))
        self.add_module("1", nn.BatchNorm2d(spec.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` to the block's output shape."""
        conv, norm = cast(nn.Conv2d, self._modules["0"]), cast(nn.BatchNorm2d, self._modules["1"])
        out: torch.Tensor = norm(conv(self.pool(x)))
        return out


class Bottleneck(nn.Module):
    """A residual bottleneck whose stride is an average pool before the expanding convolution."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.depth = _add_conv_bn(self, spec.convs)
        self.pool = nn.AvgPool2d(spec.stride) if spec.stride > 1 else nn.Identity()
        # one activation after each conv/BN pair; the last pair's output meets the shortcut first
        self.activations = nn.ModuleList([nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.Identity()])
        self.downsample = Shortcut(spec) if spec.needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(branch(x) + shortcut(x))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = x
        for n, ((conv, norm), act) in enumerate(zip(_conv_bn_pairs(self, self.depth), self.activations), start=1):
            if n == self.depth:
                y = self.pool(y)
            y = act(norm(conv(y)))
        return F.relu(y + shortcut)


class AttentionPool(nn.Module):
    """One query, the mean of the feature map, attends over the map (plus itself) and is projected."""

    def __init__(self, tokens: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.empty(tokens + 1, width))
        # separate projections: the checkpoint's layout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, output_dim)
        self.first_query_only = True  # False: every position queries, as the reference computes (same output)

    @property
    def num_heads(self) -> int:
        """Attention heads."""
        return self.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool [N, C, H, W] to [N, output_dim]."""
        n, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # N, HW, C
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional_embedding.to(x.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, t.shape[1], self.heads, -1).transpose(1, 2)

        # only the pooled token's output is used, so only its query is needed
        queries = tokens[:, :1] if self.first_query_only else tokens
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(queries)), heads(self.k_proj(tokens)), heads(self.v_proj(tokens))
        )
        pooled: torch.Tensor = self.c_proj(out[:, :, 0].reshape(n, c))
        return pooled


class ModifiedResNet(nn.Module):
    """CLIP's ResNet (three-convolution stem, pooled strides, attention pooling), built from a :class:`ResNetPlan`."""

    conv1: nn.Conv2d  # the stem's first convolution, registered by _add_conv_bn under the checkpoint's name

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        plan = resnet_plan(cfg)
        self.input_resolution = cfg.image_size
        self.output_dim = cfg.embed_dim
        self.stem_depth = _add_conv_bn(self, plan.stem)
        self.stem_pool = nn.AvgPool2d(STEM_POOL)
        for number, blocks in enumerate(plan.stages, start=1):
            self.add_module(f"layer{number}", nn.Sequential(*(Bottleneck(spec) for spec in blocks)))
        self.stages = len(plan.stages)
        self.attnpool = AttentionPool(plan.pool_tokens, plan.pool_width, plan.heads, plan.output_dim)
        # NHWC convolutions are about 20% faster on CPU (oneDNN) and use tensor cores on GPU;
        # the results are the same up to float rounding (tested against the reference).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode [N, 3, R, R] images to [N, output_dim]."""
        x = x.to(self.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
        for conv, norm in _conv_bn_pairs(self, self.stem_depth):
            x = F.relu(norm(conv(x)))
        x = self.stem_pool(x)
        for number in range(1, self.stages + 1):
            x = getattr(self, f"layer{number}")(x)
        out: torch.Tensor = self.attnpool(x)
        return out


# --------------------------------------------------------------------------------------------
# ViT


class SelfAttention(nn.Module):
    """Multi-head self-attention with one packed q/k/v projection (the checkpoint's layout), through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, first_query_only: bool = False) -> torch.Tensor:
        """Attend over [N, L, D]; with ``first_query_only`` return only token 0, [N, 1, D]."""
        n, length, width = x.shape
        h = self.heads
        if first_query_only:
            w_q, w_kv = torch.split(self.in_proj_weight, [width, 2 * width])
            b_q, b_kv = torch.split(self.in_proj_bias, [width, 2 * width])
            q = F.linear(x[:, :1], w_q, b_q).view(n, 1, h, -1).transpose(1, 2)
            k, v = F.linear(x, w_kv, b_kv).view(n, length, 2, h, -1).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (
                F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, h, -1).permute(2, 0, 3, 1, 4)
            )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, q.shape[2], width))  # type: ignore[no-any-return]  # nn.Module calls return Any; kept one line for the vit-attn-scale mutant


class FeedForward(nn.Module):
    """Expand 4x, QuickGELU, project back (``c_fc`` and ``c_proj`` in the checkpoint)."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """c_proj(quick_gelu(c_fc(x)))."""
        out: torch.Tensor = self.c_proj(quick_gelu(self.c_fc(x)))
        return out


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNormFp32(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNormFp32(width)
        self.mlp = FeedForward(width)

    def forward(self, x: torch.Tensor, first_query_only: bool = False) -> torch.Tensor:
        """One block; with ``first_query_only`` the output holds token 0 only."""
        y = self.attn(self.ln_1(x), first_query_only)
        x = (x[:, :1] if first_query_only else x) + y
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class Transformer(nn.Module):
    """A stack of residual attention blocks (batch first)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*(ResidualAttentionBlock(width, heads) for _ in range(layers)))

    def forward(self, x: torch.Tensor, first_token_only: bool = False) -> torch.Tensor:
        """Run every block; with ``first_token_only`` the last block computes token 0 only."""
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x = block(x, first_query_only=first_token_only and i == last)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT: patch embedding, class token, pre/post LayerNorm, projection."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if not cfg.patch_size or cfg.image_size % cfg.patch_size:
            raise ValueError(
                f"vision config {cfg.name!r}: image_size {cfg.image_size} is not a multiple of "
                f"patch_size {cfg.patch_size}"
            )
        if not isinstance(cfg.layers, int):
            raise ValueError(f"vision config {cfg.name!r}: a ViT's layers must be one number, got {cfg.layers!r}")
        side = cfg.image_size // cfg.patch_size
        self.input_resolution = cfg.image_size
        self.grid_size = (side, side)
        self.output_dim = cfg.embed_dim
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(side * side + 1, cfg.width))
        self.ln_pre = LayerNormFp32(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_post = LayerNormFp32(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        self.first_token_only = True  # False: the last block computes every token, as the reference does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode [N, 3, R, R] images to [N, output_dim]."""
        x = self.conv1(x.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x), first_token_only=self.first_token_only)
        out: torch.Tensor = self.ln_post(x[:, 0]) @ self.proj
        return out


BUILDERS: dict[str, type[ModifiedResNet] | type[VisionTransformer]] = {
    "resnet": ModifiedResNet,
    "vit": VisionTransformer,
}


def build_vision(cfg: VisionConfig) -> ModifiedResNet | VisionTransformer:
    """Instantiate the vision tower that ``cfg`` describes (parameters uninitialised)."""
    if cfg.kind not in BUILDERS:
        raise ValueError(
            f"vision config {cfg.name!r}: unknown kind {cfg.kind!r} (expected one of {', '.join(BUILDERS)})"
        )
    return BUILDERS[cfg.kind](cfg)
