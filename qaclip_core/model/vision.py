"""Vision towers: ModifiedResNet with attention pooling, and the ViT.

Parameter names follow the checkpoints published for QA-CLIP and Chinese-CLIP, so that a real
state dict loads strictly.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, as the reference ViT does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in fp32 and cast back."""
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that CLIP's ViT was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(1.702 x)."""
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """ResNet bottleneck with an average pool in front of strided convolutions."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # key names "0" and "1" are those of the published checkpoints
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token attends to the whole feature map."""

    def __init__(self, spatial: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = heads
        self.first_query_only = True  # False: every query, as the reference computes (same output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool [N, C, H, W] to [N, output_dim]."""
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # N, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        h, d = self.num_heads, c // self.num_heads
        # Only the first token's output is kept, so only its query is computed.
        queries = x[:, :1] if self.first_query_only else x
        q = self.q_proj(queries).view(n, -1, h, d).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, h, d).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)[:, :, :1]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: three-convolution stem, anti-aliased strides, attention pooling."""

    def __init__(self, layers: Sequence[int], output_dim: int, heads: int, image_size: int, width: int):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = image_size
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        # NHWC convolutions are about 20% faster on CPU (oneDNN) and use tensor cores on GPU;
        # the results are the same up to float rounding (tested against the reference).
        self.to(memory_format=torch.channels_last)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode [N, 3, R, R] images to [N, output_dim]."""
        x = x.to(self.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed input projection, through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, first_query_only: bool = False) -> torch.Tensor:
        """Attend over [N, L, D]; with ``first_query_only`` return only token 0, [N, 1, D]."""
        n, length, width = x.shape
        h = self.heads
        if first_query_only:
            w_q, w_kv = self.in_proj_weight.split([width, 2 * width])
            b_q, b_kv = self.in_proj_bias.split([width, 2 * width])
            q = F.linear(x[:, :1], w_q, b_q).view(n, 1, h, -1).transpose(1, 2)
            k, v = F.linear(x, w_kv, b_kv).view(n, length, 2, h, -1).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, h, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, q.shape[2], width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block of CLIP's ViT."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNormFp32(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNormFp32(width)

    def forward(self, x: torch.Tensor, first_query_only: bool = False) -> torch.Tensor:
        """One block; with ``first_query_only`` the output holds token 0 only."""
        y = self.attn(self.ln_1(x), first_query_only)
        x = (x[:, :1] if first_query_only else x) + y
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (batch first)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, first_token_only: bool = False) -> torch.Tensor:
        """Run every block; with ``first_token_only`` the last block computes token 0 only."""
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x = block(x, first_query_only=first_token_only and i == last)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT: patch embedding, class token, pre/post LayerNorm, projection."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution = image_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.ln_pre = LayerNormFp32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNormFp32(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.first_token_only = True  # False: the last block computes every token, as the reference does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode [N, 3, R, R] images to [N, output_dim]."""
        x = self.conv1(x.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x), first_token_only=self.first_token_only)
        return self.ln_post(x[:, 0]) @ self.proj


def build_vision(cfg: VisionConfig) -> nn.Module:
    """Instantiate the vision tower that ``cfg`` describes."""
    if cfg.kind == "resnet":
        return ModifiedResNet(cfg.layers, cfg.embed_dim, cfg.heads, cfg.image_size, cfg.width)
    if cfg.kind == "vit":
        return VisionTransformer(cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads, cfg.embed_dim)
    raise ValueError(f"vision config {cfg.name!r}: unknown kind {cfg.kind!r} (expected 'resnet' or 'vit')")
