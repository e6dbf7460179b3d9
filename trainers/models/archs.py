"""The architecture registry: what each `arch` name means, as data (no network is built or imported here).

An architecture is a body family (a generator and a discriminator body of the same name, in
`generators.G_BODIES` / `discriminators.D_BODIES`) plus the features the recipe defines: self-attention,
spectral norm required in both networks, InfoGAN's Q head. `trainers.config` validates against it and
`trainers.build` assembles from it, so a recipe's definition is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    body: str  # key of G_BODIES and D_BODIES
    attention: bool = False  # self-attention at config.attn_res in G and D
    spectral: bool = (
        False  # defined with spectral norm in G and D: config.g_spectral and d_spectral must be on
    )
    q_head: bool = False  # InfoGAN: D predicts the latent codes


ARCHITECTURES: dict[str, Arch] = {
    "dcgan": Arch(body="dcgan"),
    # SAGAN (Zhang et al. 2019): DCGAN shape, self-attention, spectral norm in G and D.
    "sagan": Arch(body="dcgan", attention=True, spectral=True),
    "resnet": Arch(body="resnet"),
    "infogan": Arch(body="dcgan", q_head=True),
}
