"""TrainConfig (built from dicts, strict, documented, round-tripping) and the report presets."""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest
import torch
import yaml

import trainers.config
from trainers.config import PRESETS_DIR, ConfigError, TrainConfig, load_preset, preset_names
from trainers.data import DeviceData, ImageSet
from trainers.step import build_gan, train_step

REQUIRED = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "channel"}
PRESETS = [
    "acgan_wgan_gp",
    "dcgan_nonsat",
    "infogan_digits",
    "sagan_wgan_gp",
    "wgan_clip",
    "wgan_gp_instance",
]


def test_every_preset_of_the_issue_exists():
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_names_its_source_and_loads(name):
    text = (PRESETS_DIR / f"{name}.yaml").read_text()
    assert re.search(r"^# Source: ", text, re.M), "each preset names the report it reproduces"
    cfg = load_preset(name)
    assert cfg == TrainConfig.from_dict(yaml.safe_load(text))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it saves
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_a_step(name, one_thread):
    rng = np.random.default_rng(0)
    n_classes = 10 if name == "infogan_digits" else 24
    data = DeviceData(
        ImageSet(
            images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
            labels=np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, 8)],
            files=tuple(map(str, range(8))),
            classes=tuple(map(str, range(n_classes))),
            fingerprint="fp",
        )
    )
    cfg = load_preset(name).replace(width=4, batch_size=2, attn_res=8)
    gan = build_gan(cfg, image_size=16, n_classes=n_classes, device="cpu")
    train_step(gan, data, torch.Generator().manual_seed(0))
    assert np.isfinite(list(gan.read_losses().values())).all()


def test_recipes_match_the_issue():
    wgi = load_preset("wgan_gp_instance")
    assert (wgi.loss, wgi.d_norm, wgi.g_cond, wgi.d_cond, wgi.n_critic) == (
        "wgan_gp",
        "instance",
        "concat",
        "channel",
        5,
    )
    assert (wgi.lr_g, wgi.beta1, wgi.beta2, wgi.gp_lambda, wgi.batch_size, wgi.z_dim) == (
        2e-4,
        0.0,
        0.9,
        10.0,
        128,
        100,
    )
    sagan = load_preset("sagan_wgan_gp")
    assert (sagan.arch, sagan.d_norm, sagan.d_spectral, sagan.g_spectral, sagan.lr_g, sagan.lr_d) == (
        "sagan",
        "none",
        True,
        True,
        1e-4,
        4e-4,
    )
    assert (sagan.z_dim, sagan.embed_dim) == (128, 100)
    clip = load_preset("wgan_clip")
    assert (clip.loss, clip.optimizer, clip.lr_d, clip.clip, clip.n_critic) == (
        "wgan",
        "rmsprop",
        5e-5,
        0.01,
        5,
    )
    ac = load_preset("acgan_wgan_gp")
    assert (ac.d_cond, ac.loss, ac.aux_weight, ac.beta1, ac.beta2) == (
        "channel+acgan",
        "wgan_gp",
        10.0,
        0.5,
        0.999,
    )
    info = load_preset("infogan_digits")
    assert (info.arch, info.z_dim, info.disc_codes, info.cont_codes, info.cont_weight, info.lr_g) == (
        "infogan",
        62,
        10,
        2,
        0.1,
        1e-4,
    )


# --- TrainConfig ------------------------------------------------------------------------------------


def test_unknown_keys_are_named_with_suggestions():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): 'lr' \(did you mean 'lr_g'\?\), 'zzz'"):
        TrainConfig.from_dict({**REQUIRED, "lr": 1e-3, "zzz": 1})


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError, match="missing required config key.*: loss, d_cond"):
        TrainConfig.from_dict({"arch": "dcgan", "g_cond": "concat"})


def test_round_trip_and_frozen():
    cfg = TrainConfig.from_dict({**REQUIRED, "lr_d": 4e-4, "diffaug": "color"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr_d = 1.0  # type: ignore[misc]
    assert cfg.replace(lr_d=1e-3).lr_d == 1e-3 and cfg.lr_d == 4e-4


def test_types_are_coerced_only_where_nothing_is_lost():
    cfg = TrainConfig.from_dict({**REQUIRED, "lr_g": "1e-4", "lr_d": 1, "width": 32.0})
    assert (cfg.lr_g, cfg.lr_d, cfg.width) == (1e-4, 1.0, 32)
    assert isinstance(cfg.width, int) and isinstance(cfg.lr_d, float)
    for key, value in [("width", 32.5), ("width", True), ("lr_g", "fast"), ("compile", "yes"), ("arch", 3)]:
        with pytest.raises(ConfigError, match=f"^{key} = "):
            TrainConfig.from_dict({**REQUIRED, key: value})


def test_construction_validates():
    with pytest.raises(ConfigError, match="loss wgan with d_spectral"):
        TrainConfig(arch="dcgan", loss="wgan", g_cond="concat", d_cond="channel", d_spectral=True)
    with pytest.raises(ConfigError, match="old spelling of d_norm: none with d_spectral: true"):
        TrainConfig(arch="dcgan", loss="hinge", g_cond="concat", d_cond="channel", d_norm="spectral")


def test_every_default_says_why():
    source = inspect.getsource(trainers.config.TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        line = next(ln for ln in source.splitlines() if re.match(rf"\s+{f.name}: ", ln))
        assert "  # " in line, f"field {f.name} has no one-line why"


def test_former_preset_names_still_load():
    assert load_preset("dcgan_bce") == load_preset("dcgan_nonsat")
    assert load_preset("dcgan_nonsat").loss == "nonsat"  # the name says what it trains
    assert "dcgan_bce" not in preset_names()


def test_old_spelling_of_spectral_norm_is_read_as_the_two_choices():
    old = TrainConfig.from_dict({**REQUIRED, "d_norm": "spectral"})
    assert (old.d_norm, old.d_spectral, old.g_spectral) == ("none", True, False)
    sagan = TrainConfig.from_dict({**REQUIRED, "arch": "sagan", "d_cond": "projection", "d_norm": "spectral"})
    assert (sagan.d_norm, sagan.d_spectral, sagan.g_spectral) == ("none", True, True)  # G was spectral too
    assert TrainConfig.from_dict(sagan.to_dict()) == sagan
    with pytest.raises(ConfigError, match="defined with spectral norm in G and D"):
        TrainConfig.from_dict({**REQUIRED, "arch": "sagan", "d_norm": "none", "d_spectral": True})
    with pytest.raises(ConfigError, match="d_spectral false"):
        TrainConfig.from_dict({**REQUIRED, "d_norm": "spectral", "d_spectral": False})
