"""How labels enter the networks: one registry for the generator, one for the discriminator.

Labels are multi-hot (B, C) float tensors, so every "embedding" is a bias-free linear map: the sum of the
embeddings of the objects present.

Generator conditioning returns (G input, embedding for conditional norms). Discriminator conditioning
modules expose three hooks that the discriminator calls at fixed points; a method overrides only the hooks
it needs, and `d_cond` may combine an input method with the auxiliary classifier (`channel+acgan`,
split by `trainers.choices.split_d_cond`). The method names are declared in `trainers.choices` (which the
config reads); the registries here implement them, checked one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainers import choices
from trainers.models.layers import CondBatchNorm, Layers
from trainers.registry import implements

# --- Generator ---------------------------------------------------------------------------------------


class GNone(nn.Module):
    """Unconditional (InfoGAN's codes, or a plain GAN): G sees only z."""

    extra_dim = 0

    def __init__(self, **unused) -> None:
        super().__init__()

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return z, None


class GConcat(GNone):
    """Multi-hot labels concatenated to z (Mirza & Osindero 2014)."""

    def __init__(self, *, n_classes: int, **unused) -> None:
        super().__init__()
        self.extra_dim = n_classes

    def forward(self, z, y):
        return torch.cat([z, y], 1), None  # (B, Z + C)


class GEmbed(GNone):
    """Labels -> Linear + ReLU embedding, concatenated to z."""

    def __init__(self, *, n_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.extra_dim = embed_dim
        self.embed = nn.Sequential(nn.Linear(n_classes, embed_dim), nn.ReLU())

    def forward(self, z, y):
        return torch.cat([z, self.embed(y)], 1), None  # (B, Z + E)


class GCBN(GNone):
    """Conditional batch norm: z alone enters G; the label embedding drives every norm layer."""

    def __init__(self, *, n_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(n_classes, embed_dim, bias=False)

    def forward(self, z, y):
        return z, self.embed(y)  # (B, Z), (B, E)


@dataclass(frozen=True)
class GCondSpec:
    module: type[GNone]
    # The norm layer this method brings, replacing `g_norm` (only cbn has one).
    norm: Callable[..., nn.Module] | None = None


G_CONDITIONING: dict[str, GCondSpec] = implements(
    choices.G_CONDITIONING,
    {
        "none": GCondSpec(GNone),
        "concat": GCondSpec(GConcat),
        "embed": GCondSpec(GEmbed),
        "cbn": GCondSpec(GCBN, norm=CondBatchNorm),
    },
    axis="g_cond",
)


# --- Discriminator -----------------------------------------------------------------------------------


class DCond(nn.Module):
    """Base hooks, all identities. `image` runs before the first conv, `late` on the final (B, C, 4, 4)
    features before the output conv, `project` adds to the logit from pooled features (B, C).
    `aux_classes` > 0 asks the discriminator for an auxiliary classifier head."""

    extra_in = 0  # channels added to the image
    extra_late = 0  # channels added to the final feature map
    aux_classes = 0

    def __init__(self, **unused) -> None:
        super().__init__()

    def image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def late(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return f

    def project(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None


class DChannel(DCond):
    """Labels -> Linear -> one H x W map, concatenated to the image as a 4th channel."""

    extra_in = 1

    def __init__(self, *, n_classes: int, image_size: int, layers: Layers, **unused) -> None:
        super().__init__()
        self.size = image_size
        self.embed = layers.linear(n_classes, image_size * image_size)

    def image(self, x, y):
        m = self.embed(y).view(-1, 1, self.size, self.size).to(x.dtype)  # (B, 1, H, W)
        return torch.cat([x, m], 1)  # (B, 4, H, W)


class DLate(DCond):
    """Label embedding tiled over the final 4x4 feature map and concatenated before the output conv."""

    def __init__(self, *, n_classes: int, embed_dim: int, layers: Layers, **unused) -> None:
        super().__init__()
        self.extra_late = embed_dim
        self.embed = layers.linear(n_classes, embed_dim)

    def late(self, f, y):
        e = self.embed(y).to(f.dtype)[:, :, None, None].expand(-1, -1, f.shape[2], f.shape[3])
        return torch.cat([f, e], 1)  # (B, C + E, 4, 4)


class DProjection(DCond):
    """Projection discriminator (Miyato & Koyama 2018): logit += <embed(y), pooled features>."""

    def __init__(self, *, n_classes: int, feat_dim: int, layers: Layers, **unused) -> None:
        super().__init__()
        self.embed = layers.linear(n_classes, feat_dim, bias=False)

    def project(self, h, y):
        return (self.embed(y) * h).sum(1)  # (B,)


class DACGAN(DCond):
    """Auxiliary classifier (Odena et al. 2017): a multi-label head trained with BCE on real and fake.
    On its own D does not see the label; combine it (`channel+acgan`) to give D the label too."""

    def __init__(self, *, n_classes: int, **unused) -> None:
        super().__init__()
        self.aux_classes = n_classes


D_CONDITIONING: dict[str, type[DCond]] = implements(
    choices.D_CONDITIONING,
    {
        "none": DCond,
        "channel": DChannel,
        "late": DLate,
        "projection": DProjection,
        "acgan": DACGAN,
    },
    axis="d_cond",
)
