"""Discriminators: conditioning hooks around a DCGAN-shaped or residual body that ends at 4x4.

The shared head turns the final (B, C, 4, 4) features into the adversarial logit, plus the optional
auxiliary-classifier logits (ACGAN) and InfoGAN's Q outputs, all from the same pooled features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.conditioning import DCond
from trainers.models.generators import n_doublings
from trainers.models.layers import Layers, SelfAttention

NormFactory = Callable[[int], nn.Module]


class DOut(NamedTuple):
    logits: torch.Tensor  # (B,) float32
    aux: torch.Tensor | None  # (B, n_classes) ACGAN class logits
    q: torch.Tensor | None  # (B, q_dim) InfoGAN code predictions


class Discriminator(nn.Module):
    """images (B, 3, H, W) and labels (B, C) -> DOut."""

    def __init__(
        self, *, conds: list[DCond], body: nn.Module, channels: int, q_dim: int, layers: Layers
    ) -> None:
        super().__init__()
        self.conds = nn.ModuleList(conds)
        self.body = body
        self.out = layers.conv(channels + sum(c.extra_late for c in conds), 1, 4)  # 4x4 -> 1x1
        n_aux = sum(c.aux_classes for c in conds)
        self.aux = layers.linear(channels, n_aux) if n_aux else None
        # InfoGAN's Q network: one hidden layer on the whole final feature map (Chen et al. 2016, appendix C).
        # Not on the pooled features: pooling discards layout, and G would then hide its codes in global
        # statistics (brightness, stroke width) instead of in what the evaluator reads (digit shape).
        self.q = (
            nn.Sequential(layers.linear(channels * 16, 128), nn.LeakyReLU(0.2), layers.linear(128, q_dim))
            if q_dim
            else None
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> DOut:
        for cond in self.conds:
            x = cond.image(x, y)
        f = self.body(x)  # (B, C, 4, 4)
        h = f.sum((2, 3))  # (B, C): global sum pooling, as in SNGAN
        aux = self.aux(h).float() if self.aux is not None else None
        q = self.q(f.flatten(1)).float() if self.q is not None else None  # from (B, C * 4 * 4)
        for cond in self.conds:
            f = cond.late(f, y)
        logits = self.out(f).flatten().float()  # (B,)
        for cond in self.conds:
            term = cond.project(h, y)
            if term is not None:
                logits = logits + term.float()
        return DOut(logits, aux, q)


def dcgan_body(
    *, image_size: int, in_channels: int, width: int, norm: NormFactory, layers: Layers, attn_res: int = 0
) -> tuple[nn.Module, int]:
    """DCGAN: strided 4x4 convs + norm + LeakyReLU(0.2), no norm on the first (Radford et al. 2016)."""
    n = n_doublings(image_size)
    ch = [width * 2**i for i in range(n)]  # at image_size / 2, ..., 4x4
    mods: list[nn.Module] = []
    for i in range(n):
        mods += [
            layers.conv(in_channels if i == 0 else ch[i - 1], ch[i], 4, 2, 1),
            nn.Identity() if i == 0 else norm(ch[i]),
            nn.LeakyReLU(0.2),
        ]
        if image_size // 2 ** (i + 1) == attn_res:
            mods.append(SelfAttention(ch[i], layers=layers))
    return nn.Sequential(*mods), ch[-1]


class _ResDown(nn.Module):
    """SNGAN residual block: (ReLU-)conv3-norm-ReLU-conv3-norm-avgpool, plus a 1x1 pooled shortcut.
    The first block skips the leading ReLU so that the raw image is not rectified."""

    def __init__(self, c_in: int, c_out: int, *, first: bool, norm: NormFactory, layers: Layers) -> None:
        super().__init__()
        self.first = first
        self.c1, self.n1 = layers.conv(c_in, c_out, 3, 1, 1), norm(c_out)
        self.c2, self.n2 = layers.conv(c_out, c_out, 3, 1, 1), norm(c_out)
        self.skip = layers.conv(c_in, c_out, 1)

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = self.n2(self.c2(F.relu(self.n1(self.c1(h)))))
        return F.avg_pool2d(h, 2) + self.skip(F.avg_pool2d(x, 2))


def resnet_body(
    *, image_size: int, in_channels: int, width: int, norm: NormFactory, layers: Layers, attn_res: int = 0
) -> tuple[nn.Module, int]:
    """SNGAN residual discriminator down to 4x4, ending in ReLU before pooling."""
    n = n_doublings(image_size)
    ch = [width * 2**i for i in range(n)]
    mods: list[nn.Module] = []
    for i in range(n):
        c_in = in_channels if i == 0 else ch[i - 1]
        mods.append(_ResDown(c_in, ch[i], first=i == 0, norm=norm, layers=layers))
        if image_size // 2 ** (i + 1) == attn_res:
            mods.append(SelfAttention(ch[i], layers=layers))
    mods.append(nn.ReLU())
    return nn.Sequential(*mods), ch[-1]


# Body families, named by trainers.models.archs.ARCHITECTURES; each returns (body, final channels).
D_BODIES: dict[str, Callable[..., tuple[nn.Module, int]]] = {"dcgan": dcgan_body, "resnet": resnet_body}
