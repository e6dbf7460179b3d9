"""The latent vector G draws (noise + InfoGAN codes), the mutual-information loss, and InfoGAN's accuracy.

InfoGAN (Chen et al. 2016) appends a one-hot discrete code and uniform continuous codes to the noise; D's
Q head recovers them, and both G and Q minimise the reconstruction loss (a variational bound on the mutual
information). The codes are not labels, so accuracy is measured as the paper did on MNIST: generate per
code value, classify, match code values to classes one-to-one (Hungarian), report the matched accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.models import ARCHITECTURES

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


def match_codes(codes: np.ndarray, predicted: np.ndarray, *, n_codes: int, n_classes: int) -> np.ndarray:
    """(n_codes,) class of each code value, matched one-to-one so as to maximise agreement (Hungarian);
    -1 for a code value left without a class (more codes than classes)."""
    from scipy.optimize import linear_sum_assignment  # lazy: only the InfoGAN protocol needs scipy

    counts = np.zeros((n_codes, n_classes), dtype=np.int64)
    np.add.at(counts, (codes, predicted), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(n_codes, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def matched_accuracy(codes: np.ndarray, predicted: np.ndarray, *, n_codes: int, n_classes: int) -> float:
    """Accuracy after matching code values to classes one-to-one so as to maximise agreement (Hungarian)."""
    mapping = match_codes(codes, predicted, n_codes=n_codes, n_classes=n_classes)
    return float((mapping[codes] == predicted).sum() / max(len(codes), 1))


def code_accuracy(
    generate: Callable[[Tensor, torch.Generator], Tensor],
    classify: Callable[[Tensor], Tensor],
    *,
    n_codes: int,
    n_classes: int,
    per_code: int = 100,
    seed: int = 0,
) -> float:
    """InfoGAN's protocol: `generate(disc_codes (B,), cpu generator) -> images`, `classify(images) -> (B, C)`
    scores; per_code images for each discrete value, then Hungarian-matched accuracy."""
    codes, preds = [], []
    for k in range(n_codes):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        disc = torch.full((per_code,), k, dtype=torch.long)
        preds.append(classify(generate(disc, gen)).argmax(1).cpu().numpy())
        codes.append(disc.numpy())
    return matched_accuracy(
        np.concatenate(codes), np.concatenate(preds), n_codes=n_codes, n_classes=n_classes
    )
