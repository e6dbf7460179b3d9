"""Networks: every generator and discriminator variant has the right shapes, range and layers."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils import parametrize

from trainers.build import attention_resolutions, build_discriminator, build_generator, latent_dim, q_dim
from trainers.config import TrainConfig
from trainers.models.archs import ARCHITECTURES
from trainers.models.conditioning import D_CONDITIONING, G_CONDITIONING
from trainers.models.layers import D_NORMS, G_NORMS, INITS, SelfAttention
from trainers.registry import ConfigError, lookup

from .tiny import N_CLASSES, TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> TrainConfig:
    base = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "channel", "d_norm": "spectral"}
    return TrainConfig.from_dict({**base, **TINY, **kw})


def labels(batch: int) -> torch.Tensor:
    return (torch.rand(batch, N_CLASSES) < 0.4).float()


G_COMBOS = [
    (a, c, n)
    for a, c, n in itertools.product(sorted(ARCHITECTURES), sorted(G_CONDITIONING), sorted(G_NORMS))
    if not (c == "cbn" and n != "batch")
]


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize(("arch", "g_cond", "g_norm"), G_COMBOS)
def test_generator_shape_and_range(arch, g_cond, g_norm, size):
    cfg = config(arch=arch, g_cond=g_cond, g_norm=g_norm, g_dropout=0.1)
    g = build_generator(cfg, image_size=size, n_classes=N_CLASSES)
    x = g(torch.randn(3, latent_dim(cfg)), labels(3))
    assert x.shape == (3, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1
    x.mean().backward()  # every variant is differentiable end to end


D_CONDS = sorted(D_CONDITIONING) + ["channel+acgan", "late+acgan"]
D_COMBOS = [
    (a, c, n, s)
    for a, c, n, s in itertools.product(sorted(ARCHITECTURES), D_CONDS, sorted(D_NORMS), (False, True))
    if not (a == "sagan" and not s)  # SAGAN is defined with spectral norm (test_step)
]


@pytest.mark.parametrize(("arch", "d_cond", "d_norm", "spectral"), D_COMBOS)
def test_discriminator_outputs(arch, d_cond, d_norm, spectral):
    cfg = config(arch=arch, d_cond=d_cond, d_norm=d_norm, d_spectral=spectral, g_spectral=spectral)
    d = build_discriminator(cfg, image_size=16, n_classes=N_CLASSES)
    out = d(torch.randn(3, 3, 16, 16), labels(3))
    assert out.logits.shape == (3,) and out.logits.dtype == torch.float32
    assert (out.aux is not None) == d_cond.endswith("acgan")
    if out.aux is not None:
        assert out.aux.shape == (3, N_CLASSES)
    assert (out.q is not None) == (arch == "infogan")
    if out.q is not None:
        assert out.q.shape == (3, q_dim(cfg)) == (3, 3 + 2 * 1)


def test_conditioning_reaches_the_logit():
    # With fixed images, changing only the labels must change D's output for every input method.
    x = torch.randn(2, 3, 16, 16)
    y0, y1 = torch.zeros(2, N_CLASSES), torch.eye(N_CLASSES)[:2]
    for d_cond in ("channel", "late", "projection"):
        d = build_discriminator(config(d_cond=d_cond, d_norm="none"), image_size=16, n_classes=N_CLASSES)
        assert not torch.allclose(d(x, y0).logits, d(x, y1).logits), d_cond
    d = build_discriminator(config(d_cond="acgan", d_norm="none"), image_size=16, n_classes=N_CLASSES)
    assert torch.equal(d(x, y0).logits, d(x, y1).logits)  # ACGAN alone: D does not see the label


@pytest.mark.parametrize("g_cond", ["concat", "embed", "cbn"])
def test_generator_uses_labels(g_cond):
    torch.manual_seed(0)
    # embed_dim 32: with 4 units, ReLU could zero a one-hot's whole embedding at init by chance.
    g = build_generator(config(g_cond=g_cond, embed_dim=32), image_size=16, n_classes=N_CLASSES).train()
    z = torch.randn(4, latent_dim(config()))
    if g_cond == "cbn":  # cbn's gains start at zero (plain batch norm); give them a value
        for m in g.modules():
            if hasattr(m, "gain") and isinstance(m.gain, torch.nn.Linear):
                torch.nn.init.normal_(m.gain.weight)
    y0, y1 = torch.zeros(4, N_CLASSES), torch.eye(N_CLASSES)[:4]
    assert not torch.allclose(g(z, y0), g(z, y1))


def test_spectral_norm_goes_where_asked():
    def spectral(net):
        return [m for m in net.modules() if parametrize.is_parametrized(m, "weight")]

    assert spectral(build_discriminator(config(d_norm="spectral"), image_size=16, n_classes=N_CLASSES))
    assert not spectral(build_discriminator(config(d_norm="layer"), image_size=16, n_classes=N_CLASSES))
    assert not spectral(build_generator(config(), image_size=16, n_classes=N_CLASSES))
    # The two choices are independent: a norm layer and spectral weights together, G alone.
    both = build_discriminator(config(d_norm="layer", d_spectral=True), image_size=16, n_classes=N_CLASSES)
    assert spectral(both) and any(isinstance(m, torch.nn.GroupNorm) for m in both.modules())
    assert spectral(
        build_generator(config(d_norm="none", g_spectral=True), image_size=16, n_classes=N_CLASSES)
    )
    sagan = config(arch="sagan")
    assert spectral(build_generator(sagan, image_size=16, n_classes=N_CLASSES))
    assert any(
        isinstance(m, SelfAttention)
        for m in build_generator(sagan, image_size=16, n_classes=N_CLASSES).modules()
    )
    assert any(
        isinstance(m, SelfAttention)
        for m in build_discriminator(sagan, image_size=16, n_classes=N_CLASSES).modules()
    )


def test_attention_resolution_is_checked_against_the_image_size():
    assert attention_resolutions(64) == [8, 16, 32]
    with pytest.raises(ConfigError, match="attn_res 16 .* valid: 8"):
        build_generator(config(arch="sagan", attn_res=16), image_size=16, n_classes=N_CLASSES)


@pytest.mark.parametrize("init", sorted(INITS))
def test_inits(init):
    g = build_generator(config(init=init), image_size=16, n_classes=N_CLASSES)
    w = g.body.blocks[0].conv.weight
    if init == "dcgan":
        assert 0.01 < w.std() < 0.03
    assert torch.isfinite(w).all()


def test_width_scales_the_networks():
    small = sum(
        p.numel() for p in build_generator(config(width=4), image_size=16, n_classes=N_CLASSES).parameters()
    )
    big = sum(
        p.numel() for p in build_generator(config(width=8), image_size=16, n_classes=N_CLASSES).parameters()
    )
    assert big > 2 * small


def test_lookup_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown arch 'dcgna' \(did you mean 'dcgan'\?\); valid: dcgan, infogan"
    ):
        lookup(ARCHITECTURES, "dcgna", axis="arch")


def test_image_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        build_generator(config(), image_size=24, n_classes=N_CLASSES)


def test_eight_pixel_images_work_without_attention():
    g = build_generator(config(arch="dcgan"), image_size=8, n_classes=N_CLASSES)
    assert g(torch.randn(2, latent_dim(config())), labels(2)).shape == (2, 3, 8, 8)
