"""The shared training step: one step for every architecture x loss x D-norm x D-cond x G-cond combination,
every invalid combination rejected with its message, divergence detection, EMA, speed rules."""

from __future__ import annotations

import inspect
import itertools
import re

import numpy as np
import pytest
import torch

import trainers.step
from trainers.config import ConfigError, TrainConfig
from trainers.data import DeviceData
from trainers.losses import LOSSES
from trainers.models.archs import ARCHITECTURES
from trainers.models.conditioning import D_CONDITIONING, G_CONDITIONING
from trainers.models.layers import D_NORMS
from trainers.step import Diverged, build_gan, train_step

from .tiny import N_CLASSES, TINY, random_set

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> DeviceData:
    return DeviceData(random_set(16))


# Input methods combined with the auxiliary classifier, as the registry allows: "channel+acgan", ...
D_CONDS = sorted(D_CONDITIONING) + [
    f"{m}+acgan" for m in sorted(D_CONDITIONING) if m not in ("none", "acgan")
]
# D's norm layer, and whether spectral norm wraps the weights (of D and of G alike here): every norm plain,
# and SNGAN's no norm + spectral weights.
D_WEIGHTS = [(n, False) for n in sorted(D_NORMS)] + [("none", True)]
COMBOS = list(
    itertools.product(sorted(ARCHITECTURES), sorted(LOSSES), D_WEIGHTS, D_CONDS, sorted(G_CONDITIONING))
)
KEYS = ("arch", "loss", "d_weights", "d_cond", "g_cond")


def as_config(combo: tuple) -> dict:
    d = dict(zip(KEYS, combo, strict=True))
    d["d_norm"], d["d_spectral"] = d.pop("d_weights")
    return {**d, "g_spectral": d["d_spectral"]}


# The rules validate() must enforce, written independently of it: (predicate, fragment of the message).
INVALID = [
    (lambda c: c["d_cond"] == "projection+acgan", "projection+acgan"),
    (lambda c: c["loss"] == "wgan" and c["d_spectral"], "loss wgan with d_spectral"),
    (lambda c: c["loss"] == "wgan_gp" and c["d_norm"] == "batch", "loss wgan_gp with d_norm batch"),
    (lambda c: c["arch"] == "sagan" and not c["d_spectral"], "arch sagan with d_spectral false"),
]


def expected_error(combo: dict) -> str | None:
    return next((fragment for rule, fragment in INVALID if rule(combo)), None)


@pytest.mark.slow
@pytest.mark.parametrize(
    KEYS, COMBOS, ids=lambda v: (f"{v[0]}+spectral" if v[1] else v[0]) if isinstance(v, tuple) else None
)
def test_one_step_every_combination(arch, loss, d_weights, d_cond, g_cond, data):
    combo = as_config((arch, loss, d_weights, d_cond, g_cond))
    fragment = expected_error(combo)
    if fragment is not None:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            TrainConfig.from_dict({**combo, **TINY})
        return
    cfg = TrainConfig.from_dict({**combo, **TINY})
    gan = build_gan(cfg, image_size=16, n_classes=N_CLASSES, device="cpu")
    train_step(gan, data, torch.Generator().manual_seed(0))
    losses = gan.read_losses()
    assert all(np.isfinite(v) for v in losses.values())
    # Every weight of both networks is reached by its objective (no dead head or unused embedding).
    assert [n for n, p in gan.G.named_parameters() if p.grad is None] == []
    assert [n for n, p in gan.D.named_parameters() if p.grad is None] == []
    assert gan.step == 1


def test_the_combination_grid_covers_valid_and_invalid():
    n_invalid = sum(expected_error(as_config(c)) is not None for c in COMBOS)
    assert 0 < n_invalid < len(COMBOS) / 2


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"g_cond": "cbn", "g_norm": "none"}, "g_cond cbn with g_norm none"),
        ({"d_cond": "acgan", "aux_weight": 0.0}, "aux_weight"),
        ({"arch": "infogan", "disc_codes": 0, "cont_codes": 0}, "at least one latent code"),
        ({"d_cond": "channel+late"}, "combine at most one"),
        ({"d_cond": "none+acgan"}, "combine at most one"),
        ({"d_cond": "channel+channel"}, "combine at most one"),
        ({"d_cond": "chanel"}, "did you mean 'channel'"),
        ({"loss": "wgan-gp"}, "unknown loss 'wgan-gp'.*valid: bce, hinge, nonsat, wgan, wgan_gp"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
        ({"ema": 1.0}, "ema = 1.0 is out of range"),
        ({"lr_d": 0.0}, "lr_d"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr_g": float("nan")}, "lr_g"),
    ],
)
def test_other_invalid_settings_are_rejected(changes, fragment):
    base = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "channel", **TINY}
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig.from_dict({**base, **changes})


def tiny_config(**kw) -> TrainConfig:
    base = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "channel", "d_norm": "spectral"}
    return TrainConfig.from_dict({**base, **TINY, **kw})


def test_absurd_learning_rate_diverges(data):
    cfg = tiny_config(loss="bce", d_norm="none", g_norm="none", lr_g=1e10, lr_d=1e10, batch_size=4)
    gan = build_gan(cfg, image_size=16, n_classes=N_CLASSES, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(Diverged) as err:
        for _ in range(50):
            train_step(gan, data, gen)
        gan.read_losses()
    assert err.value.step == 50


def test_n_critic_samples_one_batch_per_d_step(data):
    calls = []

    class Counting:
        def sample(self, batch_size, generator):
            calls.append(batch_size)
            return data.sample(batch_size, generator=generator)

    gan = build_gan(tiny_config(n_critic=3), image_size=16, n_classes=N_CLASSES, device="cpu")
    train_step(gan, Counting(), torch.Generator().manual_seed(0))
    assert calls == [2, 2, 2]


def test_ema_tracks_the_generator(data):
    gan = build_gan(tiny_config(ema=0.5), image_size=16, n_classes=N_CLASSES, device="cpu")
    assert gan.generator_for_eval is gan.G_ema
    start = [p.clone() for p in gan.G_ema.parameters()]
    train_step(gan, data, torch.Generator().manual_seed(0))
    for s, e, g in zip(start, gan.G_ema.parameters(), gan.G.parameters(), strict=True):
        assert torch.allclose(e, 0.5 * s + 0.5 * g)
    assert not any(p.requires_grad for p in gan.G_ema.parameters())
    assert build_gan(tiny_config(), image_size=16, n_classes=N_CLASSES, device="cpu").G_ema is None


def test_wgan_clips_d_weights(data):
    cfg = tiny_config(loss="wgan", d_norm="batch", clip=0.005, optimizer="rmsprop")
    gan = build_gan(cfg, image_size=16, n_classes=N_CLASSES, device="cpu")
    train_step(gan, data, torch.Generator().manual_seed(0))
    assert max(p.abs().max() for p in gan.D.parameters()) <= 0.005


def test_d_is_trainable_again_after_the_g_step(data):
    gan = build_gan(tiny_config(), image_size=16, n_classes=N_CLASSES, device="cpu")
    train_step(gan, data, torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in gan.D.parameters())


def test_no_host_sync_inside_the_step():
    # .item() / .tolist() / float(tensor) force a device sync; losses are read at log time only.
    source = "".join(
        inspect.getsource(f) for f in (trainers.step.d_update, trainers.step.g_update, train_step)
    )
    for forbidden in (".item()", ".tolist()", ".cpu()", "float("):
        assert forbidden not in source


def d_inputs(
    cfg: TrainConfig, data, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(real batch sampled, labels, the images D's first call saw, the labels it saw) for one step."""
    gan = build_gan(cfg, image_size=16, n_classes=N_CLASSES, device="cpu")
    seen = []
    d = gan.d
    gan.d = lambda x, y: seen.append((x.detach().clone(), y.clone())) or d(x, y)
    torch.manual_seed(seed)
    train_step(gan, data, torch.Generator().manual_seed(0))
    real, y = data.sample(cfg.batch_size, generator=torch.Generator().manual_seed(0))
    return real, y, *seen[0]


def test_flip_mirrors_some_real_images_for_d_keeps_labels_and_follows_the_seed(data):
    cfg = tiny_config(batch_size=16, flip=True)
    real, y, seen, seen_y = d_inputs(cfg, data, seed=1)
    assert torch.equal(seen_y, y)  # the labels of a mirrored image are its own: i-CLEVR has no left/right
    mirrored = [torch.equal(s, r.flip(-1)) and not torch.equal(s, r) for s, r in zip(seen, real, strict=True)]
    assert all(m or torch.equal(s, r) for m, s, r in zip(mirrored, seen, real, strict=True))
    assert 0 < sum(mirrored) < len(real)  # P(all or none of 16) = 2**-15
    assert torch.equal(d_inputs(cfg, data, seed=1)[2], seen)  # same seed, same flips
    assert not torch.equal(d_inputs(cfg, data, seed=2)[2], seen)


def test_without_flip_d_sees_the_real_batch_untouched(data):
    real, y, seen, seen_y = d_inputs(tiny_config(batch_size=16), data, seed=1)
    assert torch.equal(seen, real) and torch.equal(seen_y, y)
