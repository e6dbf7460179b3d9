"""The names of every choice a recipe makes, and the facts about them the config's rules read: data only.

This is where a choice's name is declared. `trainers.config` validates against these tables and so imports
nothing that builds or trains a network (nor torch). Each implementation module keys its registry by the same
names, checked one to one when it is imported (`trainers.registry.implements`): a name added here without its
implementation, or the reverse, fails at import. Architectures have their own data leaf beside the bodies
they name, `trainers/models/archs.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.registry import lookup

__all__ = [
    "AUGMENTS",
    "D_CONDITIONING",
    "D_NORMS",
    "G_CONDITIONING",
    "G_NORMS",
    "INITS",
    "LOSSES",
    "LossTerms",
    "OPTIMIZERS",
    "parse_policy",
    "split_d_cond",
]


@dataclass(frozen=True)
class LossTerms:
    """What a loss adds to D's update besides its objective (the config's rules and the step read these)."""

    gp: bool = False  # gp_lambda * gradient penalty on real/fake interpolates (no batch norm in D then)
    clip: bool = False  # clamp D's weights to [-clip, clip] after each D step (no spectral norm then)


# Implemented in trainers/losses.py.
LOSSES: dict[str, LossTerms] = {
    "bce": LossTerms(),  # minimax (Goodfellow et al. 2014)
    "nonsat": LossTerms(),  # non-saturating G loss, same D loss
    "wgan": LossTerms(clip=True),  # Arjovsky et al. 2017
    "wgan_gp": LossTerms(gp=True),  # Gulrajani et al. 2017
    "hinge": LossTerms(),  # Lim & Ye 2017, Miyato et al. 2018
}

# Implemented in trainers/optimizers.py.
OPTIMIZERS: dict[str, str] = {
    "adam": "Adam(lr, betas=(beta1, beta2))",
    "rmsprop": "RMSprop(lr): momentum-free, for WGAN's clipped critic",
}

# Implemented in trainers/models/layers.py. Spectral norm is not among them: it reshapes the weights, not the
# activations, so it is its own choice (d_spectral, g_spectral) and combines with any norm.
D_NORMS: dict[str, str] = {
    "none": "no norm layer",
    "batch": "BatchNorm2d",
    "instance": "InstanceNorm2d, affine",
    "layer": "GroupNorm(1, C): layer norm over (C, H, W), as WGAN-GP recommends",
}
# g_cond cbn brings its own norm (a conditional batch norm) in place of G_NORMS'.
G_NORMS: dict[str, str] = {
    "batch": "BatchNorm2d",
    "none": "no norm layer",
}
INITS: dict[str, str] = {
    "dcgan": "weights N(0, 0.02), norm gains N(1, 0.02)",
    "orthogonal": "orthogonal weights (SNGAN / BigGAN)",
}

# Implemented in trainers/models/conditioning.py.
G_CONDITIONING: dict[str, str] = {
    "none": "G sees only z",
    "concat": "multi-hot labels appended to z",
    "embed": "Linear + ReLU label embedding appended to z",
    "cbn": "conditional batch norm driven by a label embedding",
}
D_CONDITIONING: dict[str, str] = {
    "none": "D does not see the label",
    "channel": "labels -> one HxW map, a 4th input channel",
    "late": "label embedding tiled on the final 4x4 features",
    "projection": "logit += <embed(y), pooled features>",
    "acgan": "auxiliary multi-label classifier head",
}

# DiffAugment policy names, implemented in trainers/augment.py.
AUGMENTS: dict[str, str] = {
    "color": "brightness, saturation, contrast",
    "translation": "shift by up to 1/8 of the size, zero fill",
    "cutout": "zero one square of half the size",
}


def split_d_cond(d_cond: str) -> tuple[str, ...]:
    """`channel+acgan` -> ('channel', 'acgan'): the methods a discriminator combines."""
    return tuple(d_cond.split("+"))


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' is no augmentation. Unknown names raise."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    for name in names:
        lookup(AUGMENTS, name, axis="diffaug policy")
    return names
