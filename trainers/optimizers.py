"""The optimizer registry: one factory per name of `trainers.choices.OPTIMIZERS`, all called as
make(params, lr=, beta1=, beta2=, device=)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainers import choices
from trainers.registry import implements


def _adam(params, *, lr: float, beta1: float, beta2: float, device: torch.device):
    # The fused kernel is one launch per step on CUDA; the CPU keeps the reference implementation.
    return torch.optim.Adam(
        params, lr=lr, betas=(beta1, beta2), fused=True if device.type == "cuda" else None
    )


def _rmsprop(params, *, lr: float, beta1: float, beta2: float, device: torch.device):
    # WGAN (Arjovsky et al. 2017): momentum-free, as momentum destabilised the clipped critic.
    return torch.optim.RMSprop(params, lr=lr)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = implements(
    choices.OPTIMIZERS, {"adam": _adam, "rmsprop": _rmsprop}, axis="optimizer"
)
