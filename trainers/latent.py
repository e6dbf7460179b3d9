"""The latent vector every generator draws (noise, plus InfoGAN's codes) and InfoGAN's mutual-information loss.

InfoGAN (Chen et al. 2016) appends a one-hot discrete code and uniform continuous codes to the noise; D's
Q head recovers them, and both G and Q minimise the reconstruction loss (a variational bound on the mutual
information). The codes are not labels: how an InfoGAN is scored (code values matched to classes) is part
of the evaluation protocol, trainers/evaluator/protocol.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.models.archs import ARCHITECTURES

if TYPE_CHECKING:
    from trainers.config import TrainConfig


@dataclass(frozen=True)
class Codes:
    disc: Tensor | None  # (B,) long: the discrete code's value
    cont: Tensor | None  # (B, K) float in [-1, 1]


@dataclass(frozen=True)
class Latent:
    """Layout of G's input vector: [noise (z_dim) | one-hot discrete code (disc) | continuous codes (cont)]."""

    z_dim: int
    disc: int = 0
    cont: int = 0

    @classmethod
    def from_config(cls, config: TrainConfig) -> Latent:
        if not ARCHITECTURES[config.arch].q_head:
            return cls(config.z_dim)
        return cls(config.z_dim, config.disc_codes, config.cont_codes)

    @property
    def dim(self) -> int:
        """Width of the vector: G's input before its conditioning front end."""
        return self.z_dim + self.disc + self.cont

    @property
    def has_codes(self) -> bool:
        return self.disc + self.cont > 0

    def sample(
        self,
        batch: int,
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
        disc: Tensor | None = None,
    ) -> tuple[Tensor, Codes | None]:
        """z (B, z_dim + disc + cont) on `device`. With a generator, every draw comes from it (on its device)
        and is then moved, so a CPU generator gives the same z on any device. `disc` fixes the discrete code."""
        where = generator.device if generator is not None else device
        noise = torch.randn(batch, self.z_dim, generator=generator, device=where)
        if not self.has_codes:
            return noise.to(device), None
        parts, idx, cont = [noise], None, None
        if self.disc:
            idx = (
                disc
                if disc is not None
                else torch.randint(self.disc, (batch,), generator=generator, device=where)
            )
            idx = idx.to(where)
            parts.append(F.one_hot(idx, self.disc).float())
        if self.cont:
            cont = torch.rand(batch, self.cont, generator=generator, device=where) * 2 - 1
            parts.append(cont)
        z = torch.cat(parts, 1).to(device)  # (B, z_dim + disc + cont)
        return z, Codes(
            disc=idx.to(device) if idx is not None else None,
            cont=cont.to(device) if cont is not None else None,
        )


def info_loss(q: Tensor, codes: Codes, *, disc_weight: float, cont_weight: float) -> Tensor:
    """Cross-entropy for the discrete code plus Gaussian NLL (learned variance) for continuous codes.
    q: (B, disc + 2 * cont) = [discrete logits | means | log-variances]."""
    k = codes.cont.shape[1] if codes.cont is not None else 0
    n_disc = q.shape[1] - 2 * k
    loss = q.new_zeros(())
    if codes.disc is not None:
        loss = loss + disc_weight * F.cross_entropy(q[:, :n_disc], codes.disc)
    if codes.cont is not None:
        mean, logvar = q[:, n_disc : n_disc + k], q[:, n_disc + k :].clamp(-8.0, 8.0)
        nll = 0.5 * (logvar + (codes.cont - mean).square() * torch.exp(-logvar))  # + const
        loss = loss + cont_weight * nll.mean()
    return loss
