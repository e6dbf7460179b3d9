"""One training step of the cGAN family: n_critic D updates, then one G update, shared by every recipe.

Speed rules: batches are sampled by index from a device-resident tensor (trainers.data.DeviceData), bf16
autocast and channels_last on CUDA, optional torch.compile, and no host sync inside the step: losses are
summed on the device and read (and checked for divergence) only by `GAN.read_losses()` at log time.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainers.augment import diff_augment, random_hflip
from trainers.build import build_models, eval_weights
from trainers.choices import parse_policy
from trainers.latent import Latent, info_loss
from trainers.losses import LOSSES, Loss, aux_loss, clip_weights, gradient_penalty
from trainers.models.discriminators import Discriminator
from trainers.models.generators import Generator
from trainers.optimizers import OPTIMIZERS
from trainers.registry import lookup

if TYPE_CHECKING:
    from trainers.config import TrainConfig


class Diverged(RuntimeError):
    """A loss became NaN or infinite. `step` is the G step at which that was detected (losses are checked
    at log time, so the first non-finite value lies within the preceding log interval)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training diverged: non-finite loss detected at step {step}")
        self.step = step


@dataclass(eq=False)
class GAN:
    """Networks, optimizers and step state of one trial. `g` and `d` are the callables the step uses
    (compiled when asked); `G` and `D` the modules whose weights are saved."""

    config: TrainConfig
    G: Generator
    D: Discriminator
    G_ema: Generator | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: Loss
    latent: Latent
    policy: tuple[str, ...]
    device: torch.device
    g: Callable[..., Tensor]
    d: Callable[..., Any]
    step: int = 0
    _sums: Tensor = field(init=False)  # (2,) running sums of D and G losses since the last read
    _count: int = 0

    def __post_init__(self) -> None:
        self._sums = torch.zeros(2, device=self.device)
        self._ema_pairs = (
            (list(self.G_ema.parameters()), list(self.G.parameters())) if self.G_ema is not None else None
        )

    @property
    def generator_for_eval(self) -> Generator:
        """The EMA generator when EMA is on, else G (`trainers.build.eval_weights`)."""
        return eval_weights(self.G, self.G_ema)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def augment(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.policy) if self.policy else x

    def read_losses(self) -> dict[str, float]:
        """Mean D and G losses since the last read (one host sync). Raises Diverged if any was not finite."""
        sums = self._sums.tolist()
        count, self._count = self._count, 0
        self._sums.zero_()
        if not all(map(lambda v: v == v and abs(v) != float("inf"), sums)):
            raise Diverged(self.step)
        return {"loss_d": sums[0] / max(count, 1), "loss_g": sums[1] / max(count, 1)}


def build_gan(config: TrainConfig, *, image_size: int, n_classes: int, device: str | torch.device) -> GAN:
    """Networks on `device` (channels_last on CUDA), their optimizers (TTUR learning rates) and EMA copy."""
    device = torch.device(device)
    G, D = build_models(config, image_size=image_size, n_classes=n_classes)
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if config.ema > 0 else None
    make_opt = lookup(OPTIMIZERS, config.optimizer, axis="optimizer")
    betas = {"beta1": config.beta1, "beta2": config.beta2, "device": device}
    loss = lookup(LOSSES, config.loss, axis="loss")
    # Double backward (the gradient penalty) does not go through a compiled graph: D stays eager then.
    g = torch.compile(G) if config.compile else G
    d = torch.compile(D) if config.compile and not loss.gp else D
    return GAN(
        config=config,
        G=G,
        D=D,
        G_ema=G_ema,
        opt_g=make_opt(G.parameters(), lr=config.lr_g, **betas),
        opt_d=make_opt(D.parameters(), lr=config.lr_d, **betas),
        loss=loss,
        latent=Latent.from_config(config),
        policy=parse_policy(config.diffaug),
        device=device,
        g=g,
        d=d,
    )


def d_update(gan: GAN, real: Tensor, y: Tensor) -> Tensor:
    """One D step. Objective, minimised over D:
        loss.d(D(T(x), y), D(T(G(z, y)), y))
        [+ gp_lambda * E[(||grad_x_hat D(x_hat, y)|| - 1)^2]]            (wgan_gp)
        [+ aux_weight * (BCE(aux(T(x)), y) + BCE(aux(T(G(z, y))), y))]   (acgan)
        [+ info loss of Q on the fake's codes]                            (infogan)
    where T is DiffAugment; for wgan, D's weights are clipped to [-clip, clip] afterwards."""
    cfg = gan.config
    z, codes = gan.latent.sample(len(y), device=gan.device)
    with gan.autocast():
        with torch.no_grad():
            fake = gan.g(z, y)
        real_t, fake_t = gan.augment(real), gan.augment(fake)
        out_real, out_fake = gan.d(real_t, y), gan.d(fake_t, y)
        loss = gan.loss.d(out_real.logits, out_fake.logits)
        if out_real.aux is not None:
            loss = loss + cfg.aux_weight * (aux_loss(out_real.aux, y) + aux_loss(out_fake.aux, y))
        if codes is not None:
            loss = loss + info_loss(
                out_fake.q, codes, disc_weight=cfg.disc_weight, cont_weight=cfg.cont_weight
            )
        if gan.loss.gp:
            penalty = gradient_penalty(lambda x: gan.d(x, y).logits, real_t, fake_t)
            loss = loss + cfg.gp_lambda * penalty

    gan.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    gan.opt_d.step()
    if gan.loss.clip:
        clip_weights(gan.D, cfg.clip)
    return loss.detach()


def g_update(gan: GAN, y: Tensor) -> Tensor:
    """One G step. Objective, minimised over G:
        loss.g(D(T(G(z, y)), y))
        [+ aux_weight * BCE(aux(T(G(z, y))), y)]   (acgan: G makes D's classifier agree with y)
        [+ info loss of Q on G's codes]            (infogan: G keeps its codes recoverable)
    D's parameters are frozen for the step: only the gradient through D's input is needed."""
    cfg = gan.config
    z, codes = gan.latent.sample(len(y), device=gan.device)
    gan.D.requires_grad_(False)
    with gan.autocast():
        out = gan.d(gan.augment(gan.g(z, y)), y)
        loss = gan.loss.g(out.logits)
        if out.aux is not None:
            loss = loss + cfg.aux_weight * aux_loss(out.aux, y)
        if codes is not None:
            loss = loss + info_loss(out.q, codes, disc_weight=cfg.disc_weight, cont_weight=cfg.cont_weight)

    gan.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    gan.opt_g.step()
    gan.D.requires_grad_(True)
    return loss.detach()


@torch.no_grad()
def ema_update(gan: GAN) -> None:
    """G_ema <- decay * G_ema + (1 - decay) * G; buffers (batch-norm statistics) are copied."""
    ema_params, params = gan._ema_pairs
    torch._foreach_lerp_(ema_params, params, 1.0 - gan.config.ema)
    for b_ema, b in zip(gan.G_ema.buffers(), gan.G.buffers(), strict=True):
        b_ema.copy_(b)


def train_step(gan: GAN, data: Any, generator: torch.Generator) -> None:
    """n_critic D updates on fresh real batches, one G update on the last batch's labels, then EMA.
    `data.sample(batch_size, generator=)` returns x (B, 3, H, W) in [-1, 1] and labels (B, C). With
    `flip`, D's real images are mirrored at random (labels unchanged) before anything else sees them."""
    cfg = gan.config
    for _ in range(cfg.n_critic):
        real, y = data.sample(cfg.batch_size, generator=generator)
        if cfg.flip:
            real = random_hflip(real)  # (B, 3, H, W); fakes are not flipped: G learns both mirror images
        if gan.device.type == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        loss_d = d_update(gan, real, y)
    loss_g = g_update(gan, y)
    if gan.G_ema is not None:
        ema_update(gan)
    gan._sums += torch.stack([loss_d, loss_g])
    gan._count += 1
    gan.step += 1
