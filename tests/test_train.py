"""The trial function and its command line: evaluation cadence, reports, grids, best checkpoint,
divergence, InfoGAN's matched accuracy, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.config import TrainConfig
from trainers.evaluator import Evaluator, ResNet18
from trainers.evaluator.protocol import code_accuracy, matched_accuracy
from trainers.latent import Latent, info_loss
from trainers.train import Diverged, EvalReport, main, steps_per_epoch, train

from .tiny import N_CLASSES, TINY, random_set

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> TrainConfig:
    base = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "channel", "d_norm": "spectral"}
    return TrainConfig.from_dict({**base, **TINY, **kw})


def evaluator() -> Evaluator:
    torch.manual_seed(0)
    return Evaluator(ResNet18(n_classes=N_CLASSES, width=4), device="cpu")


CONDITIONS = {
    "test": np.eye(N_CLASSES, dtype=np.float32),
    "new_test": np.eye(N_CLASSES, dtype=np.float32)[::-1],
}


def test_reports_every_evaluation_and_after_the_last_epoch(tmp_path):
    reports: list[EvalReport] = []
    result = train(
        config(),
        random_set(8, one_hot=True),
        epochs=5,
        out_dir=tmp_path,
        evaluator=evaluator(),
        conditions=CONDITIONS,
        callback=reports.append,
        eval_every=2,
        progress=False,
    )
    assert [r.epoch for r in reports] == [2, 4, 5]
    assert [r.step for r in reports] == [2 * 4, 4 * 4, 5 * 4]  # 8 images / batch 2 = 4 steps per epoch
    last = reports[-1]
    assert {"acc", "acc_test", "acc_new_test", "acc_std", "fid", "diversity", "loss_d", "loss_g"} <= set(
        last.metrics
    )
    assert all(isinstance(v, float) for v in last.metrics.values())
    assert last.checkpoint == tmp_path / "last.pt" and last.checkpoint.is_file()
    assert set(last.grids) == {"test", "new_test"}
    grid = Image.open(last.grids["test"])
    assert grid.size == (1 + N_CLASSES * 17, 1 + 17)  # one row of 5 16x16 images, 1 px padding
    assert result["epoch"] == 5 and result["step"] == 20
    assert result["best_acc"] == max(r.metrics["acc"] for r in reports)
    assert (tmp_path / "best.pt").is_file()


def test_callback_can_stop_training(tmp_path):
    class Stop(Exception):
        pass

    def stop(report):
        raise Stop

    with pytest.raises(Stop):
        train(
            config(),
            random_set(8, one_hot=True),
            epochs=3,
            out_dir=tmp_path,
            evaluator=None,
            conditions={},
            callback=stop,
            progress=False,
        )
    assert (tmp_path / "last.pt").is_file()  # the checkpoint was written before the callback ran


def test_trains_without_an_evaluator(tmp_path):
    result = train(
        config(),
        random_set(8, one_hot=True),
        epochs=1,
        out_dir=tmp_path,
        evaluator=None,
        conditions=CONDITIONS,
        progress=False,
    )
    assert set(result["metrics"]) == {"loss_d", "loss_g", "train_seconds", "train_cpu_seconds"}
    assert result["best_checkpoint"] is None


def test_divergence_ends_the_trial(tmp_path):
    cfg = config(loss="bce", d_norm="none", g_norm="none", lr_g=1e10, lr_d=1e10)
    with pytest.raises(Diverged):
        train(
            cfg,
            random_set(64, one_hot=True),
            epochs=3,
            out_dir=tmp_path,
            evaluator=None,
            conditions={},
            progress=False,
        )


def test_a_diverged_run_at_the_cli_exits_3_with_its_one_line_last(tmp_path):
    # the recipe's failure, not the user's (trainers.cli.EXIT_DIVERGED); the progress bar is closed first, so
    # the error is the last thing on the terminal, not a half-drawn bar after it
    argv = ["-m", "trainers.train", "--preset", "dcgan_nonsat", "--data", "digits", "--size", "16",
            "--epochs", "2", "--eval-every", "100", "--threads", "1", "--out", str(tmp_path / "run"),
            "--set", "lr_g=1e10", "--set", "lr_d=1e10", "--set", "d_norm=none", "--set", "g_norm=none"]  # fmt: skip
    env = {**__import__("os").environ, "CGAN_SEARCH_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, env=env)
    last = out.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert out.returncode == 3, out.stderr[-2000:]
    assert last.startswith("python -m trainers.train: error: training diverged: non-finite loss"), last
    assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1


def test_epoch_means_one_pass_of_d_over_the_data():
    assert steps_per_epoch(18_000, config(batch_size=64, n_critic=1)) == 281
    assert steps_per_epoch(18_000, config(batch_size=64, n_critic=5)) == 56
    assert steps_per_epoch(3, config(batch_size=64)) == 1


def test_matched_accuracy_is_hungarian():
    codes = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(codes, np.array([2, 2, 0, 0, 1, 1]), n_codes=3, n_classes=3) == 1.0
    # Two codes both map mostly to class 0: only one of them may claim it.
    assert matched_accuracy(codes, np.array([0, 0, 0, 0, 1, 1]), n_codes=3, n_classes=3) == pytest.approx(
        4 / 6
    )


def test_code_accuracy_of_a_perfect_generator():
    # A "generator" that writes its code value into the image, and a "classifier" that reads it back
    # permuted: the matched accuracy must undo the permutation.
    perm = torch.tensor([3, 1, 4, 0, 2])

    def generate(disc, gen):
        return disc.float()[:, None, None, None].expand(-1, 3, 2, 2)

    def classify(images):
        return torch.nn.functional.one_hot(perm[images[:, 0, 0, 0].long()], N_CLASSES).float()

    assert code_accuracy(generate, classify, n_codes=N_CLASSES, n_classes=N_CLASSES, per_code=4) == 1.0


def test_latent_layout_and_info_loss():
    latent = Latent(z_dim=4, disc=3, cont=2)
    z, codes = latent.sample(6, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert z.shape == (6, 4 + 3 + 2)
    assert torch.equal(z[:, 4:7].argmax(1), codes.disc) and torch.equal(z[:, 7:], codes.cont)
    fixed, fixed_codes = latent.sample(6, device=torch.device("cpu"), disc=torch.full((6,), 2))
    assert (fixed_codes.disc == 2).all()
    good = torch.cat(
        [torch.nn.functional.one_hot(codes.disc, 3) * 10.0, codes.cont, torch.full((6, 2), -4.0)], 1
    )
    bad = torch.cat([torch.zeros(6, 3), -codes.cont, torch.zeros(6, 2)], 1)
    assert info_loss(good, codes, disc_weight=1, cont_weight=0.1) < info_loss(
        bad, codes, disc_weight=1, cont_weight=0.1
    )


def test_infogan_reports_matched_code_accuracy(tmp_path):
    cfg = TrainConfig.from_dict(
        {
            "arch": "infogan",
            "loss": "nonsat",
            "g_cond": "none",
            "d_cond": "none",
            **TINY,
            "disc_codes": N_CLASSES,
        }
    )
    reports = []
    train(
        cfg,
        random_set(8, one_hot=True),
        epochs=1,
        out_dir=tmp_path,
        evaluator=evaluator(),
        conditions=CONDITIONS,
        callback=reports.append,
        progress=False,
    )
    acc = reports[0].metrics["acc"]
    assert 1 / N_CLASSES <= acc <= 1.0  # a one-to-one matching never scores below chance
    assert set(reports[0].grids) == {"codes"}


def test_trainer_imports_no_framework():
    code = "import sys, trainers.train; print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_nothing_reads_config_with_a_default():
    for path in Path("trainers").rglob("*.py"):
        assert "config.get(" not in path.read_text(), path


# --- Command line -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--preset", "dcgan_bec", "--data", "digits", "--epochs", "1"],
            "unknown preset 'dcgan_bec'; valid: acgan_wgan_gp",
        ),
        (
            ["--preset", "dcgan_nonsat", "--data", "digits", "--epochs", "1", "--set", "widht=8"],
            "'widht' (did you mean 'width'?)",
        ),
        (
            ["--preset", "dcgan_nonsat", "--data", "digits", "--epochs", "1", "--set", "loss=hinje"],
            "unknown loss 'hinje'",
        ),
        # the former name of dcgan_nonsat still loads: the run gets as far as the data
        (["--preset", "dcgan_bce", "--data", "/nonexistent", "--epochs", "1"], "/nonexistent"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("python -m trainers.train: error: ")


def test_cli_trains_a_preset_on_digits(tmp_path, capsys):
    ev = Evaluator(ResNet18(n_classes=10, width=4), device="cpu")
    ev.save(tmp_path / "ev.pt", {})
    argv = [
        "--preset",
        "infogan_digits",
        "--data",
        "digits",
        "--size",
        "16",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    argv += ["--evaluator", str(tmp_path / "ev.pt"), "--set", "width=4", "--set", "batch_size=256"]
    assert main(argv) == 0
    assert (tmp_path / "run" / "last.pt").is_file()
    assert (tmp_path / "run" / "grids" / "codes_epoch0001.png").is_file()
    assert "epoch 1: " in capsys.readouterr().err
