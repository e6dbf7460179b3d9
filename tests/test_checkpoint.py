"""Exact checkpoints: plain data, atomic writes, and a resumed run bit-identical to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import trainers.checkpoint as ckpt
from trainers.config import ConfigError, TrainConfig
from trainers.evaluator import Evaluator, ResNet18
from trainers.train import steps_per_epoch, train

from .tiny import N_CLASSES, TINY, random_set

pytestmark = pytest.mark.usefixtures("one_thread")

# Recipes that between them draw from every random source the step uses: z, codes, batch indices,
# DiffAugment, flips, dropout, the gradient penalty's interpolation, EMA and both optimizers' state.
RECIPES = {
    "wgan_gp": {
        "arch": "dcgan",
        "loss": "wgan_gp",
        "g_cond": "embed",
        "d_cond": "channel+acgan",
        "d_norm": "layer",
        "n_critic": 2,
        "ema": 0.9,
        "diffaug": "color,translation,cutout",
        "g_dropout": 0.2,
        "flip": True,
    },
    "infogan": {"arch": "infogan", "loss": "nonsat", "g_cond": "none", "d_cond": "none", "d_norm": "batch"},
    "sagan_rmsprop": {
        "arch": "sagan",
        "loss": "hinge",
        "g_cond": "cbn",
        "d_cond": "projection",
        "d_norm": "spectral",
        "optimizer": "rmsprop",
    },
}


def run(cfg, out: Path, epochs: int, resume: Path | None = None, eval_every: int = 1):
    ev = Evaluator(ResNet18(n_classes=N_CLASSES, width=4), device="cpu")
    conditions = {"test": np.eye(N_CLASSES, dtype=np.float32)}
    return train(
        cfg,
        random_set(),
        epochs=epochs,
        out_dir=out,
        evaluator=ev,
        conditions=conditions,
        resume=resume,
        eval_every=eval_every,
        progress=False,
    )


def assert_same_state(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        if a[key] is None:
            assert b[key] is None
            continue
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for key in ("opt_g", "opt_d"):
        for i, s in a[key]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, b[key]["state"][i][k]), f"{key}[{i}].{k}"
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_is_bit_identical(recipe, tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES[recipe], **TINY})
    run(cfg, tmp_path / "whole", epochs=4)
    run(cfg, tmp_path / "split", epochs=2)
    run(cfg, tmp_path / "split", epochs=4, resume=tmp_path / "split" / "last.pt")
    whole = ckpt.load_checkpoint(tmp_path / "whole" / "last.pt")
    split = ckpt.load_checkpoint(tmp_path / "split" / "last.pt")
    assert whole["step"] == 4 * steps_per_epoch(12, cfg) == 4 * 6 // cfg.n_critic  # 12 images, batch 2
    assert_same_state(whole, split)


def test_evaluation_does_not_perturb_training(tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES["wgan_gp"], **TINY})
    run(cfg, tmp_path / "a", epochs=2, eval_every=1)
    run(cfg, tmp_path / "b", epochs=2, eval_every=2)
    assert_same_state(
        ckpt.load_checkpoint(tmp_path / "a" / "last.pt"), ckpt.load_checkpoint(tmp_path / "b" / "last.pt")
    )


def test_checkpoint_is_plain_data(tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES["wgan_gp"], **TINY})
    run(cfg, tmp_path, epochs=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state) >= {"G", "D", "G_ema", "opt_g", "opt_d", "step", "epoch", "rng", "config", "data"}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "data"}
    assert TrainConfig.from_dict(state["config"]) == cfg
    assert state["data"]["image_size"] == 16 and state["data"]["n_classes"] == N_CLASSES


def test_resume_refuses_another_config(tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES["infogan"], **TINY})
    run(cfg, tmp_path, epochs=1)
    with pytest.raises(ConfigError, match="differs in lr_g"):
        run(cfg.replace(lr_g=1e-3), tmp_path, epochs=2, resume=tmp_path / "last.pt")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint({"format": ckpt.FORMAT, "step": 1}, tmp_path / "last.pt")

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"format": ckpt.FORMAT, "step": 2}, path)
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_load_generator_prefers_the_ema_weights(tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES["wgan_gp"], **TINY})
    run(cfg, tmp_path, epochs=1)
    g, config, info = ckpt.load_generator(tmp_path / "last.pt")
    state = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert config == cfg and info["image_size"] == 16 and not g.training
    for name, value in g.state_dict().items():
        assert torch.equal(value, state["G_ema"][name])


def test_generator_file_holds_the_sampling_weights_only(tmp_path):
    cfg = TrainConfig.from_dict({**RECIPES["wgan_gp"], **TINY})
    run(cfg, tmp_path, epochs=1)
    slim = ckpt.save_generator(tmp_path / "last.pt", tmp_path / "generator.pt")
    state = ckpt.load_checkpoint(tmp_path / "last.pt")
    on_disk = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert set(on_disk) == {"config", "data", "ema", "state_dict"} and on_disk["ema"] is True
    for name, value in on_disk["state_dict"].items():
        assert torch.equal(value, state["G_ema"][name])  # EMA weights, not G's
    assert (tmp_path / "generator.pt").stat().st_size < (tmp_path / "last.pt").stat().st_size / 3
    # A generator file slims to itself and samples like the checkpoint it came from.
    assert ckpt.save_generator(tmp_path / "generator.pt", tmp_path / "again.pt")["ema"] == slim["ema"]
    z = torch.randn(2, cfg.z_dim)
    y = torch.eye(N_CLASSES)[:2]
    with torch.no_grad():
        a = ckpt.load_generator(tmp_path / "last.pt")[0](z, y)
        b = ckpt.load_generator(tmp_path / "again.pt")[0](z, y)
    assert torch.equal(a, b)
    torch.save({"model": {}}, tmp_path / "judge.pt")
    with pytest.raises(ValueError, match="neither a trainer checkpoint"):
        ckpt.read_generator(tmp_path / "judge.pt")


def test_a_checkpoint_saved_before_a_key_existed_resumes_with_its_default(tmp_path):
    """Checkpoints written before `flip` existed have no such key: they load, resume and sample with flip
    off, the behaviour they were trained with."""
    cfg = TrainConfig.from_dict({**RECIPES["infogan"], **TINY})
    run(cfg, tmp_path, epochs=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["config"]["flip"]
    ckpt.save_checkpoint(state, tmp_path / "old.pt")
    assert ckpt.load_checkpoint(tmp_path / "old.pt")["config"]["flip"] is False
    run(cfg, tmp_path / "resumed", epochs=2, resume=tmp_path / "old.pt")
    assert ckpt.load_generator(tmp_path / "old.pt")[1].flip is False


FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


def test_a_checkpoint_saved_with_d_norm_spectral_loads_and_trains_on(tmp_path):
    """A checkpoint written before d_spectral existed (by commit 7baef15's code, see the fixture's script):
    its `d_norm: spectral` reads as no norm + spectral weights (in G too, for SAGAN), and resuming it to
    epoch 2 gives the weights that code gave."""
    old = FIXTURES / "sagan_spectral_epoch1.pt"
    assert torch.load(old, weights_only=True)["config"]["d_norm"] == "spectral"  # as saved then
    state = ckpt.load_checkpoint(old)
    cfg = TrainConfig.from_dict(state["config"])
    assert (cfg.d_norm, cfg.d_spectral, cfg.g_spectral) == ("none", True, True)
    run(cfg, tmp_path, epochs=2, resume=old)  # evaluating on the way does not move the weights (tested above)
    got = torch.load(tmp_path / "last.pt", weights_only=True)
    expected = torch.load(FIXTURES / "sagan_spectral_epoch2_weights.pt", weights_only=True)
    assert got["step"] == expected["step"] == 12
    # A conv bias feeding a batch norm has zero gradient in exact arithmetic (the norm subtracts the batch mean),
    # so what it gets is rounding noise, which Adam scales to steps of lr's size: another CPU's rounding sends it,
    # and the running mean that tracks it, elsewhere (CI's did; a 1e-7 relative nudge of the epoch-1 weights moves
    # them by up to 7 lr here, every other weight by < 1.5e-4 relative). Those are held to Adam's bound on a step,
    # lr (1 - beta1) / sqrt(1 - beta2) (Kingma & Ba 2015, sec. 2.1), per step resumed, either way; the rest to
    # rounding.
    steps = expected["step"] - state["step"]
    adam_bound = 2 * steps * cfg.lr_g * max(1.0, (1 - cfg.beta1) / (1 - cfg.beta2) ** 0.5)
    for net in ("G", "D", "G_ema"):
        assert got[net].keys() == expected[net].keys()
        blocks_with_bn = {
            k.removesuffix(".norm.bn.running_mean") for k in expected[net] if "bn.running_mean" in k
        }
        unpinned = {f"{b}.{leaf}" for b in blocks_with_bn for leaf in ("conv.bias", "norm.bn.running_mean")}
        assert net == "D" or unpinned & expected[net].keys()  # G's DCGAN blocks have them: the check bites
        for key, value in expected[net].items():
            if key in unpinned:
                assert (got[net][key] - value).abs().max() <= adam_bound, f"{net}.{key}"
            else:  # tolerance: another CPU may round convolutions otherwise
                torch.testing.assert_close(got[net][key], value, rtol=1e-4, atol=1e-6, msg=f"{net}.{key}")
    assert ckpt.load_generator(old)[1] == cfg
