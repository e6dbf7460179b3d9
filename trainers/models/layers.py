"""Building blocks shared by every architecture: layer factories, norms, self-attention, weight init.

Spectral norm enters in one place, `Layers(spectral=True)`: every conv and linear a model builds through
that factory is wrapped, so no architecture repeats the decision. The norm and init names are declared in
`trainers.choices` (which the config reads); the registries here implement them, checked one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from trainers import choices
from trainers.registry import implements


@dataclass(frozen=True)
class Layers:
    """Factory for the weight layers of one network; `spectral` wraps each in spectral norm."""

    spectral: bool = False

    def _wrap(self, layer: nn.Module) -> nn.Module:
        return spectral_norm(layer) if self.spectral else layer

    def conv(self, c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0, *, bias: bool = True):
        return self._wrap(nn.Conv2d(c_in, c_out, k, stride, pad, bias=bias))

    def deconv(self, c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0, *, bias: bool = True):
        return self._wrap(nn.ConvTranspose2d(c_in, c_out, k, stride, pad, bias=bias))

    def linear(self, d_in: int, d_out: int, *, bias: bool = True):
        return self._wrap(nn.Linear(d_in, d_out, bias=bias))


# --- Discriminator norms: name -> norm layer factory. Spectral norm is a separate choice (Layers above): it
# reshapes the weights, not the activations, so it combines with any of these (TrainConfig.d_spectral). ----

D_NORMS: dict[str, Callable[[int], nn.Module]] = implements(
    choices.D_NORMS,
    {
        "none": lambda c: nn.Identity(),
        "batch": nn.BatchNorm2d,
        "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
        # Layer norm over (C, H, W) per sample, as WGAN-GP recommends in place of batch norm.
        "layer": lambda c: nn.GroupNorm(1, c),
    },
    axis="d_norm",
)


# --- Generator norms: every one is called as norm(x, c) so that cbn can use the label embedding c ----


class PlainNorm(nn.Module):
    """An unconditional norm with the conditional call signature (the embedding is ignored)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x)


class CondBatchNorm(nn.Module):
    """Conditional batch norm (de Vries et al. 2017): per-sample gain and bias from the label embedding."""

    def __init__(self, channels: int, *, embed_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(embed_dim, channels)
        self.bias = nn.Linear(embed_dim, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        gain = 1.0 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1): starts as plain batch norm
        return self.bn(x) * gain + self.bias(c)[:, :, None, None]


G_NORMS: dict[str, Callable[[int], nn.Module]] = implements(
    choices.G_NORMS,
    {
        "batch": lambda c: PlainNorm(nn.BatchNorm2d(c)),
        "none": lambda c: PlainNorm(nn.Identity()),
    },
    axis="g_norm",
)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019); gamma starts at 0 so the block begins as the identity."""

    def __init__(self, channels: int, *, layers: Layers) -> None:
        super().__init__()
        self.query = layers.conv(channels, max(channels // 8, 1), 1, bias=False)
        self.key = layers.conv(channels, max(channels // 8, 1), 1, bias=False)
        self.value = layers.conv(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # SAGAN uses unscaled dot products
        return x + self.gamma * out.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


# --- Weight init ------------------------------------------------------------------------------------


def _weight(m: nn.Module) -> torch.Tensor:
    """The trainable weight, under a spectral-norm parametrization if there is one."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def _init_dcgan(m: nn.Module) -> None:
    # DCGAN paper: all weights from N(0, 0.02); norm gains from N(1, 0.02).
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(_weight(m), 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _init_orthogonal(m: nn.Module) -> None:
    # BigGAN / SNGAN practice: orthogonal weights keep the layer's singular values at 1.
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.orthogonal_(_weight(m))


INITS: dict[str, Callable[[nn.Module], None]] = implements(
    choices.INITS, {"dcgan": _init_dcgan, "orthogonal": _init_orthogonal}, axis="init"
)


def zero_cbn_gains(net: nn.Module) -> None:
    """Reset conditional-norm projections after init so that cbn starts as plain batch norm."""
    for m in net.modules():
        if isinstance(m, CondBatchNorm):
            for lin in (m.gain, m.bias):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
