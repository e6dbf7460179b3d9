"""The networks of a `TrainConfig`: the one place that reads a config to assemble trainers/models.

`build_models(config, image_size=, n_classes=)` builds G and D; image size and class count come from the
data, so one config trains at any resolution. Everything below it takes keyword arguments and layer
factories (trainers/models never sees a config).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from trainers.choices import split_d_cond
from trainers.latent import Latent
from trainers.models.archs import ARCHITECTURES, Arch
from trainers.models.conditioning import D_CONDITIONING, G_CONDITIONING
from trainers.models.discriminators import D_BODIES, Discriminator
from trainers.models.generators import G_BODIES, Generator, n_doublings
from trainers.models.layers import D_NORMS, G_NORMS, INITS, Layers, zero_cbn_gains
from trainers.registry import ConfigError, lookup

if TYPE_CHECKING:
    from trainers.config import TrainConfig

__all__ = [
    "attention_resolutions",
    "build_discriminator",
    "build_generator",
    "build_models",
    "eval_weights",
    "latent_dim",
    "q_dim",
]


def attention_resolutions(image_size: int) -> list[int]:
    """Feature-map resolutions where self-attention can sit in both G and D: 8 .. image_size / 2."""
    return [8 * 2**i for i in range(n_doublings(image_size) - 1)]


def latent_dim(config: TrainConfig) -> int:
    """Width of the vector G draws: noise plus InfoGAN's one-hot discrete and continuous codes."""
    return Latent.from_config(config).dim


def q_dim(config: TrainConfig) -> int:
    """Q outputs: discrete-code logits, then a mean and a log-variance per continuous code."""
    latent = Latent.from_config(config)
    return latent.disc + 2 * latent.cont


def eval_weights(g, g_ema):
    """What is evaluated, sampled and shipped: the EMA of G's weights when the run keeps one, else G.
    Takes modules or state_dicts alike (the step holds modules, a checkpoint state_dicts)."""
    return g_ema if g_ema is not None else g


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
    body = lookup(G_BODIES, arch.body, axis="body")(
        image_size=image_size,
        in_dim=latent_dim(config) + cond.extra_dim,
        width=config.width,
        norm=norm,
        layers=Layers(spectral=config.g_spectral),
        attn_res=_attn_res(config, arch, image_size),
        dropout=config.g_dropout,
    )
    g = Generator(cond=cond, body=body)
    g.apply(lookup(INITS, config.init, axis="init"))
    zero_cbn_gains(g)
    return g


def build_discriminator(config: TrainConfig, *, image_size: int, n_classes: int) -> Discriminator:
    arch = lookup(ARCHITECTURES, config.arch, axis="arch")
    layers = Layers(spectral=config.d_spectral)
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
    body, channels = lookup(D_BODIES, arch.body, axis="body")(
        image_size=image_size,
        in_channels=3 + sum(c.extra_in for c in conds),
        width=config.width,
        norm=lookup(D_NORMS, config.d_norm, axis="d_norm"),
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
