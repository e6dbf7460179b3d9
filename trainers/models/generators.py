"""Generators: one conditioning front end, then a DCGAN-shaped or residual body, ending in tanh.

Every body doubles the resolution from a 4x4 stem up to the image size; channels halve on the way up,
from width * 2^(n-1) at 4x4 to width at the last hidden resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.conditioning import GNone
from trainers.models.layers import Layers, SelfAttention

NormFactory = Callable[[int], nn.Module]


def n_doublings(image_size: int) -> int:
    """How many 2x resolution steps separate 4x4 from image_size (a power of two >= 8)."""
    n = int(math.log2(image_size)) - 2
    if image_size < 8 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image size must be a power of two >= 8, got {image_size}")
    return n


def _attention(channels: int, res: int, attn_res: int, layers: Layers) -> nn.Module:
    return SelfAttention(channels, layers=layers) if res == attn_res else nn.Identity()


class Generator(nn.Module):
    """z (B, latent_dim) and labels (B, C) -> images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, *, cond: GNone, body: nn.Module) -> None:
        super().__init__()
        self.cond = cond
        self.body = body

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, c = self.cond(z, y)
        return torch.tanh(self.body(h, c))


class _DCGANUp(nn.Module):
    def __init__(self, conv: nn.Module, norm: nn.Module, attn: nn.Module, dropout: float) -> None:
        super().__init__()
        self.conv, self.norm, self.attn = conv, norm, attn
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x, c):
        return self.drop(self.attn(F.relu(self.norm(self.conv(x), c))))


class DCGANGenerator(nn.Module):
    """DCGAN (Radford et al. 2016): transposed 4x4 convs, norm + ReLU; SAGAN adds attention at attn_res."""

    def __init__(
        self,
        *,
        image_size: int,
        in_dim: int,
        width: int,
        norm: NormFactory,
        layers: Layers,
        attn_res: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = n_doublings(image_size)
        ch = [width * 2 ** (n - 1 - i) for i in range(n)]  # at 4x4, 8x8, ..., image_size / 2
        convs = [layers.deconv(in_dim, ch[0], 4, 1, 0)]  # (B, in_dim, 1, 1) -> (B, ch0, 4, 4)
        convs += [layers.deconv(ch[i - 1], ch[i], 4, 2, 1) for i in range(1, n)]
        self.blocks = nn.ModuleList(
            _DCGANUp(convs[i], norm(ch[i]), _attention(ch[i], 4 * 2**i, attn_res, layers), dropout)
            for i in range(n)
        )
        self.out = layers.deconv(ch[-1], 3, 4, 2, 1)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = h[:, :, None, None]  # (B, in_dim, 1, 1)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)  # (B, 3, H, W), before tanh


class _ResUp(nn.Module):
    """SNGAN residual block: norm-ReLU-up-conv3-norm-ReLU-conv3, plus an upsampled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, *, norm: NormFactory, layers: Layers) -> None:
        super().__init__()
        self.n1, self.c1 = norm(c_in), layers.conv(c_in, c_out, 3, 1, 1)
        self.n2, self.c2 = norm(c_out), layers.conv(c_out, c_out, 3, 1, 1)
        self.skip = layers.conv(c_in, c_out, 1)

    def forward(self, x, c):
        h = F.interpolate(F.relu(self.n1(x, c)), scale_factor=2.0)
        h = self.c2(F.relu(self.n2(self.c1(h), c)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0))


class ResNetGenerator(nn.Module):
    """SNGAN / Miyato et al. 2018 residual generator."""

    def __init__(
        self,
        *,
        image_size: int,
        in_dim: int,
        width: int,
        norm: NormFactory,
        layers: Layers,
        attn_res: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = n_doublings(image_size)
        ch = [width * 2 ** (n - 1 - i) for i in range(n)] + [width]  # block i maps ch[i] -> ch[i + 1]
        self.c0 = ch[0]
        self.stem = layers.linear(in_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(_ResUp(ch[i], ch[i + 1], norm=norm, layers=layers) for i in range(n))
        self.attn = nn.ModuleList(_attention(ch[i + 1], 8 * 2**i, attn_res, layers) for i in range(n))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = norm(width)
        self.out = layers.conv(width, 3, 3, 1, 1)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.stem(h).view(-1, self.c0, 4, 4)  # (B, ch0, 4, 4)
        for block, attn in zip(self.blocks, self.attn, strict=True):
            x = self.drop(attn(block(x, c)))
        return self.out(F.relu(self.norm(x, c)))  # (B, 3, H, W), before tanh


# Body families, named by trainers.models.archs.ARCHITECTURES; each is called with the same keywords.
G_BODIES: dict[str, Callable[..., nn.Module]] = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}
