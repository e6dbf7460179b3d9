"""Networks of the cGAN family, assembled from registries.

`build_models(config, image_size=, n_classes=)` is the only place that reads a `TrainConfig`; every
module below it takes keyword arguments and layer factories. Image size and class count come from the
data, so one config trains at any resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from trainers.models.conditioning import D_CONDITIONING, G_CONDITIONING, split_d_cond
from trainers.models.discriminators import Discriminator, DOut, dcgan_body, resnet_body
from trainers.models.generators import DCGANGenerator, Generator, ResNetGenerator, n_doublings
from trainers.models.layers import D_NORMS, G_NORMS, INITS, Layers, zero_cbn_gains
from trainers.models.registry import ConfigError, lookup

if TYPE_CHECKING:
    from trainers.config import TrainConfig


@dataclass(frozen=True)
class Arch:
    g_body: Callable[..., nn.Module]
    d_body: Callable[..., tuple[nn.Module, int]]
    attention: bool = False  # self-attention at config.attn_res in G and D
    g_spectral: bool = False  # spectral norm in G as well as D
    q_head: bool = False  # InfoGAN: D predicts the latent codes


ARCHITECTURES: dict[str, Arch] = {
    "dcgan": Arch(g_body=DCGANGenerator, d_body=dcgan_body),
    # SAGAN (Zhang et al. 2019): DCGAN shape, self-attention, spectral norm in G and D.
    "sagan": Arch(g_body=DCGANGenerator, d_body=dcgan_body, attention=True, g_spectral=True),
    "resnet": Arch(g_body=ResNetGenerator, d_body=resnet_body),
    "infogan": Arch(g_body=DCGANGenerator, d_body=dcgan_body, q_head=True),
}

__all__ = [
    "ARCHITECTURES",
    "ConfigError",
    "DOut",
    "Discriminator",
    "Generator",
    "attention_resolutions",
    "build_discriminator",
    "build_generator",
    "build_models",
    "latent_dim",
    "lookup",
    "q_dim",
]


def attention_resolutions(image_size: int) -> list[int]:
    """Feature-map resolutions where self-attention can sit in both G and D: 8 .. image_size / 2."""
    return [8 * 2**i for i in range(n_doublings(image_size) - 1)]


def latent_dim(config: TrainConfig) -> int:
    """Width of the vector G draws: noise plus InfoGAN's one-hot discrete and continuous codes."""
    arch = lookup(ARCHITECTURES, config.arch, axis="arch")
    return config.z_dim + (config.disc_codes + config.cont_codes if arch.q_head else 0)


def q_dim(config: TrainConfig) -> int:
    """Q outputs: discrete-code logits, then a mean and a log-variance per continuous code."""
    arch = lookup(ARCHITECTURES, config.arch, axis="arch")
    return config.disc_codes + 2 * config.cont_codes if arch.q_head else 0


def _attn_res(config: TrainConfig, arch: Arch, image_size: int) -> int:
    if not arch.attention:
        return 0
    valid = attention_resolutions(image_size)
    if config.attn_res not in valid:
        raise ConfigError(
            f"attn_res {config.attn_res} is not a feature-map resolution of a {image_size}x{image_size} "
            f"network; valid: {', '.join(map(str, valid))}"
        )
    return config.attn_res


def build_generator(config: TrainConfig, *, image_size: int, n_classes: int) -> Generator:
    arch = lookup(ARCHITECTURES, config.arch, axis="arch")
    spec = lookup(G_CONDITIONING, config.g_cond, axis="g_cond")
    cond = spec.module(n_classes=n_classes, embed_dim=config.embed_dim)
    # cbn brings its own (conditional) batch norm; validate() ensured g_norm agrees with it.
    norm = (
        partial(spec.norm, embed_dim=config.embed_dim)
        if spec.norm
        else lookup(G_NORMS, config.g_norm, axis="g_norm")
    )
    body = arch.g_body(
        image_size=image_size,
        in_dim=latent_dim(config) + cond.extra_dim,
        width=config.width,
        norm=norm,
        layers=Layers(spectral=arch.g_spectral),
        attn_res=_attn_res(config, arch, image_size),
        dropout=config.g_dropout,
    )
    g = Generator(cond=cond, body=body)
    g.apply(lookup(INITS, config.init, axis="init"))
    zero_cbn_gains(g)
    return g


def build_discriminator(config: TrainConfig, *, image_size: int, n_classes: int) -> Discriminator:
    arch = lookup(ARCHITECTURES, config.arch, axis="arch")
    dnorm = lookup(D_NORMS, config.d_norm, axis="d_norm")
    layers = Layers(spectral=dnorm.spectral)
    feat = config.width * 2 ** (n_doublings(image_size) - 1)  # channels of the final 4x4 features
    conds = [
        lookup(D_CONDITIONING, name, axis="d_cond")(
            n_classes=n_classes,
            image_size=image_size,
            feat_dim=feat,
            embed_dim=config.embed_dim,
            layers=layers,
        )
        for name in split_d_cond(config.d_cond)
    ]
    body, channels = arch.d_body(
        image_size=image_size,
        in_channels=3 + sum(c.extra_in for c in conds),
        width=config.width,
        norm=dnorm.norm,
        layers=layers,
        attn_res=_attn_res(config, arch, image_size),
    )
    d = Discriminator(conds=conds, body=body, channels=channels, q_dim=q_dim(config), layers=layers)
    d.apply(lookup(INITS, config.init, axis="init"))
    return d


def build_models(config: TrainConfig, *, image_size: int, n_classes: int) -> tuple[Generator, Discriminator]:
    return (
        build_generator(config, image_size=image_size, n_classes=n_classes),
        build_discriminator(config, image_size=image_size, n_classes=n_classes),
    )
