"""Adversarial losses: one signature for all, D and G losses from the same logits.

`d(real_logits, fake_logits) -> scalar` is what D minimises, `g(fake_logits) -> scalar` what G minimises;
logits are (B,) float tensors. What else a loss needs (a gradient penalty, weight clipping) is declared with
its name in `trainers.choices.LOSSES`, which the config's rules read too. tests/test_losses.py pins each sign.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers import choices
from trainers.choices import LossTerms
from trainers.registry import implements


@dataclass(frozen=True)
class Loss:
    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]
    terms: LossTerms  # the loss's entry in trainers.choices.LOSSES

    @property
    def gp(self) -> bool:
        """Add gp_lambda * gradient penalty on real/fake interpolates to D's loss."""
        return self.terms.gp

    @property
    def clip(self) -> bool:
        """Clamp D's weights to [-clip, clip] after each D step."""
        return self.terms.clip


def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit): softplus keeps it stable.
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _minimax_g(fake: Tensor) -> Tensor:
    # G minimises log(1 - D(G(z))) (Goodfellow et al. 2014): saturates when D wins.
    return -F.softplus(fake).mean()


def _nonsat_g(fake: Tensor) -> Tensor:
    # G minimises -log D(G(z)): same fixed point, strong gradients early.
    return F.softplus(-fake).mean()


def _wasserstein_d(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def _wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    # Lim & Ye 2017, Miyato et al. 2018: only margin violations count.
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


# Name -> (D objective, G objective); the names and their extra terms are trainers.choices.LOSSES'.
_OBJECTIVES = {
    "bce": (_bce_d, _minimax_g),
    "nonsat": (_bce_d, _nonsat_g),
    "wgan": (_wasserstein_d, _wasserstein_g),
    "wgan_gp": (_wasserstein_d, _wasserstein_g),
    "hinge": (_hinge_d, _wasserstein_g),
}
LOSSES: dict[str, Loss] = {
    name: Loss(d=d, g=g, terms=choices.LOSSES[name])
    for name, (d, g) in implements(choices.LOSSES, _OBJECTIVES, axis="loss").items()
}


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad critic(x_hat)||_2 - 1)^2], x_hat on real-fake segments."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    # eps inside the sqrt: the norm's own gradient is NaN at exactly zero.
    norm = (grad.float().flatten(1).square().sum(1) + 1e-12).sqrt()
    return (norm - 1.0).square().mean()


def clip_weights(net: nn.Module, c: float) -> None:
    """WGAN (Arjovsky et al. 2017): keep the critic Lipschitz by clamping every weight to [-c, c]."""
    with torch.no_grad():
        for p in net.parameters():
            p.clamp_(-c, c)


def aux_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """ACGAN's auxiliary multi-label classification loss (BCE per class)."""
    return F.binary_cross_entropy_with_logits(logits, labels)
