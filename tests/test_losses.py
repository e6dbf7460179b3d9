"""Losses and DiffAugment: signs pinned, penalty and clipping checked, augmentations shape-preserving."""

from __future__ import annotations

import pytest
import torch

from trainers.augment import AUGMENTS, diff_augment
from trainers.choices import parse_policy
from trainers.losses import LOSSES, aux_loss, clip_weights, gradient_penalty
from trainers.registry import ConfigError


def logits(v: float) -> torch.Tensor:
    return torch.full((4,), v)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_d_loss_falls_as_real_rises_and_fake_falls(name):
    d = LOSSES[name].d
    base = d(logits(0.0), logits(0.0))
    assert d(logits(0.5), logits(0.0)) < base
    assert d(logits(0.0), logits(-0.5)) < base
    assert d(logits(0.5), logits(-0.5)) < d(logits(0.25), logits(-0.25)) < base


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_g_loss_falls_as_fake_rises(name):
    g = LOSSES[name].g
    assert g(logits(0.5)) < g(logits(0.0)) < g(logits(-0.5))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_signature_one_return_type(name):
    loss = LOSSES[name]
    real = torch.randn(8, requires_grad=True)
    fake = torch.randn(8, requires_grad=True)
    d, g = loss.d(real, fake), loss.g(fake)
    assert d.shape == g.shape == ()
    d.backward()
    assert real.grad is not None and fake.grad is not None


def test_known_values():
    zero = logits(0.0)
    log2 = torch.log(torch.tensor(2.0))
    assert torch.isclose(LOSSES["bce"].d(zero, zero), 2 * log2)
    assert torch.isclose(LOSSES["bce"].g(zero), -log2)  # minimax: log(1 - 1/2)
    assert torch.isclose(LOSSES["nonsat"].g(zero), log2)  # -log(1/2)
    assert LOSSES["hinge"].d(logits(2.0), logits(-2.0)) == 0  # beyond the margins nothing is learned
    assert LOSSES["wgan"].d(logits(3.0), logits(1.0)) == -2.0


def test_flags():
    assert [n for n, loss in sorted(LOSSES.items()) if loss.gp] == ["wgan_gp"]
    assert [n for n, loss in sorted(LOSSES.items()) if loss.clip] == ["wgan"]


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    w = torch.zeros(3 * 4 * 4)
    w[0] = 1.0  # a linear critic with ||grad|| = 1 everywhere

    def critic(x):
        return x.flatten(1) @ w

    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).abs() < 1e-6
    assert torch.isclose(gradient_penalty(lambda x: 3 * critic(x), real, fake), torch.tensor(4.0))


def test_gradient_penalty_is_finite_for_a_flat_critic():
    real = torch.randn(2, 3, 4, 4)
    param = torch.zeros((), requires_grad=True)
    gp = gradient_penalty(lambda x: x.flatten(1).sum(1) * param, real, real.clone())
    gp.backward()
    assert torch.isfinite(param.grad)


def test_clip_weights():
    net = torch.nn.Linear(4, 4)
    torch.nn.init.normal_(net.weight, std=10)
    clip_weights(net, 0.01)
    assert all(p.abs().max() <= 0.01 for p in net.parameters())


def test_aux_loss_prefers_the_true_labels():
    y = torch.tensor([[1.0, 0.0, 1.0]])
    assert aux_loss(torch.tensor([[5.0, -5.0, 5.0]]), y) < aux_loss(torch.tensor([[-5.0, 5.0, -5.0]]), y)


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_augmentations_keep_shape_and_gradient(name):
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x * 2 - 1, (name,))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_augmentations_change_the_images():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert not torch.equal(diff_augment(x, parse_policy("color,translation,cutout")), x)
    assert torch.equal(diff_augment(x, parse_policy("")), x)


def test_policy_parsing():
    assert parse_policy(" color, cutout ") == ("color", "cutout")
    with pytest.raises(ConfigError, match="unknown diffaug policy 'colour'.*did you mean 'color'"):
        parse_policy("colour")
