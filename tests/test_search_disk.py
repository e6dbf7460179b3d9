"""What an ended trial keeps on disk: its Tune checkpoint loses the full trainer checkpoint and keeps one
generator file (the best evaluation's, the last one's, or none), on a real Tune checkpoint and filesystem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import trainers.checkpoint as ckpt
from search.clevr import CLEVR
from search.options import complete, parse
from search.trial import CHECKPOINT_NAME, GENERATOR_NAME, REPORT_NAME
from trainers.config import TrainConfig
from trainers.train import train

from .tiny import TINY, random_set

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "projection", "d_norm": "spectral"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trial's checkpoint folder as search/trial.py writes it: epoch 2's full checkpoint, epoch 1's
    generator as the best one."""
    tmp = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict({**RECIPE, **TINY, "ema": 0.5})
    train(cfg, random_set(), epochs=1, out_dir=tmp / "run", evaluator=None, conditions={}, progress=False)
    folder = tmp / "checkpoint_000001"
    folder.mkdir()
    ckpt.save_generator(tmp / "run" / "last.pt", folder / GENERATOR_NAME)
    train(cfg, random_set(), epochs=2, out_dir=tmp / "run", evaluator=None, conditions={}, progress=False,
          resume=tmp / "run" / "last.pt")  # fmt: skip
    shutil.copy2(tmp / "run" / "last.pt", folder / CHECKPOINT_NAME)
    (folder / REPORT_NAME).write_text(json.dumps({"epoch": 2, "step": 12, "best_epoch": 1, "best_acc": 0.5}))
    return folder


def ended(trained: Path, tmp_path: Path):
    from ray import tune

    folder = shutil.copytree(trained, tmp_path / "trial" / trained.name)
    return tune.Checkpoint.from_directory(folder), Path(folder)


@pytest.mark.parametrize("keep", ["best", "last", "none"])
def test_an_ended_trial_keeps_one_generator_and_no_full_checkpoint(keep, trained, tmp_path):
    from search.tracking import drop_full_checkpoint, keep_generator

    checkpoint, folder = ended(trained, tmp_path)
    (tmp_path / "local").mkdir()
    kept = keep_generator(checkpoint, keep=keep, local=tmp_path / "local")
    drop_full_checkpoint(checkpoint)
    names = {p.name for p in folder.iterdir()}
    if keep == "none":
        assert kept == [] and names == {REPORT_NAME}
        return
    assert names == {GENERATOR_NAME, REPORT_NAME}
    assert [p.name for p in kept] == [GENERATOR_NAME, REPORT_NAME]  # what MLflow receives
    assert kept[0].read_bytes() == (folder / GENERATOR_NAME).read_bytes()
    slim = torch.load(folder / GENERATOR_NAME, weights_only=True)
    assert set(slim) == {"config", "data", "ema", "state_dict"} and slim["ema"]
    last = ckpt.load_checkpoint(trained / CHECKPOINT_NAME)["G_ema"]  # epoch 2's EMA weights
    best = ckpt.read_generator(trained / GENERATOR_NAME)["state_dict"]  # epoch 1's
    same_as_last = all(torch.equal(slim["state_dict"][k], last[k]) for k in last)
    same_as_best = all(torch.equal(slim["state_dict"][k], best[k]) for k in best)
    assert (same_as_last, same_as_best) == ((True, False) if keep == "last" else (False, True))


def test_pruned_generator_defaults_to_none_and_to_last_with_allow_pruned():
    def opts(*argv):
        args, parser = parse(CLEVR, list(argv))
        return complete(args, parser, CLEVR, cluster_gpus=None)

    assert opts().pruned_generator == "none"
    assert opts("--allow-pruned").pruned_generator == "last"
    assert opts("--allow-pruned", "--pruned-generator", "none").pruned_generator == "none"
    assert opts("--pruned-generator", "last").pruned_generator == "last"
