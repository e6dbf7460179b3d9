"""Honest selection (issue 15 items 1-2): the val condition set, --select, and ASHA's check of its own cuts."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.rungs import Point, check, milestones, spearman
from trainers.data.labels import iclevr_conditions
from trainers.evaluator.protocol import VAL, evaluate_generator, metric_keys, val_conditions, with_val

ROOT = Path(__file__).resolve().parent.parent


def iclevr_train_labels(n: int = 3000, seed: int = 1) -> np.ndarray:
    """Labels like the synthetic set's: 1, 2 or 3 distinct classes of 24, a third each."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 24), np.float32)
    for i in range(n):
        labels[i, rng.choice(24, i % 3 + 1, replace=False)] = 1
    return labels


# --- the val set ------------------------------------------------------------------------------------------


def test_iclevr_val_sets_are_disjoint_from_both_test_sets_deterministic_and_like_the_training_labels():
    tests = iclevr_conditions()
    train = iclevr_train_labels()
    val = val_conditions(train, tests)
    assert val.shape == (96, 24) and val.dtype == np.float32  # 3 x 32
    test_rows = {tuple(r) for t in tests.values() for r in t}
    assert not {tuple(r) for r in val} & test_rows
    counts = np.bincount(val.sum(1).astype(int), minlength=4)
    assert counts[0] == 0 and counts[1:].sum() == 96 and counts[1:].min() >= 20  # a third each, give or take
    assert set(np.unique(val)) == {0.0, 1.0}  # multi-hot: no class twice in a set
    assert (val_conditions(train, tests) == val).all()
    assert (val_conditions(train[::-1].copy(), tests) == val).all()  # the count mix, not the row order
    assert not (val_conditions(train, tests, seed=1) == val).all()
    two_only = train[train.sum(1) == 2]
    assert (val_conditions(two_only, tests).sum(1) == 2).all()  # follows the training count mix


def test_digits_val_is_every_class_three_times_and_keyed_apart_from_the_test_noise():
    tests = {"digits": np.eye(10, dtype=np.float32)}
    conditions = with_val(tests, np.eye(10, dtype=np.float32)[np.arange(500) % 10])
    assert list(conditions) == [VAL, "digits"]
    assert conditions[VAL].shape == (30, 10) and (conditions[VAL].sum(0) == 3).all()
    with pytest.raises(ValueError, match="already has"):
        with_val(conditions, np.eye(10))


class LabelReader:
    """A judge that reads the label vector written into the image (see `half_right`)."""

    n_classes = 24
    device = torch.device("cpu")

    def scores_and_features(self, images, batch_size=256):
        flat = images.flatten(1)[:, : self.n_classes]
        return flat, flat


def half_right(labels, gen):
    """Writes each row's first class only (plus a little noise): right on one-object rows, half right on two."""
    first = torch.zeros_like(labels)
    first[torch.arange(len(labels)), labels.argmax(1)] = 1
    images = torch.zeros(len(labels), 3, 4, 2)
    images.view(len(labels), -1)[:, :24] = first + 0.01 * torch.rand(first.shape, generator=gen)
    return images


def test_acc_is_the_test_sets_mean_and_never_includes_val():
    conditions = with_val(iclevr_conditions(), iclevr_train_labels())
    out = evaluate_generator(half_right, LabelReader(), conditions, n_draws=2, seed=0)
    assert tuple(out) == metric_keys(conditions)
    assert {"acc_val", "acc_val_std", "acc_test", "acc_new_test"} <= set(out)
    assert out["acc"] == pytest.approx((out["acc_test"] + out["acc_new_test"]) / 2)
    assert out["acc_val"] != pytest.approx(out["acc"])  # a different mix of object counts
    without = evaluate_generator(half_right, LabelReader(), iclevr_conditions(), n_draws=2, seed=0)
    assert {k: out[k] for k in without} == without  # adding val changes no reported figure


# --- ASHA's check on hand-made curves ---------------------------------------------------------------------


def curves() -> dict[str, list[Point]]:
    """Five trials run 4 epochs: epoch 1 ranks them backwards (rho -1), epochs 2-3 exactly (rho 1). At rung
    1 they arrive in rising order (none cut); x is cut far beyond its noise, y within it; z stops by itself."""
    finals = dict(zip("abcde", (0.5, 0.6, 0.7, 0.8, 0.9), strict=True))
    out = {}
    for i, (t, final) in enumerate(finals.items()):
        out[t] = [
            Point(1, 1.4 - final, 0.01, 10 - i),  # e arrives first at rung 1 (0.5), a last (0.9)
            Point(2, final, 0.01, 20 + i),  # rung 2: a first (0.5) ... e last (0.9)
            Point(3, final, 0.01, 30 + i),
            Point(4, final, 0.01, 40 + i),
        ]
    out["x"] = [Point(1, 0.1, 0.05, 11)]  # cut-off median(0.5..0.9) = 0.7: gap 0.6 > 0.05
    out["y"] = [Point(1, 0.6, 0.1, 12)]  # cut-off median(0.5..0.9, 0.1) = 0.65: gap 0.05 < 0.1
    out["z"] = [Point(1, 0.9, 0.01, 13)]  # above the cut-off, yet stopped at epoch 1: not ASHA's doing
    return out


def test_rung_check_on_hand_made_curves():
    result = check(curves(), max_epochs=4, grace=1, rf=2, ended={"z"})
    assert result.rungs == (1, 2)
    assert result.spearman[1] == pytest.approx((-1.0, 5)) and result.spearman[2] == pytest.approx((1.0, 5))
    cuts = {c.trial_id: c for c in result.cuts}
    assert set(cuts) == {"x", "y"} and not result.mismatches
    assert cuts["x"].cutoff == pytest.approx(0.7) and cuts["x"].beyond_noise
    assert cuts["y"].cutoff == pytest.approx(0.65) and not cuts["y"].beyond_noise
    assert result.suggested_grace == 2
    line = result.line()
    assert "2 cuts, 1 beyond the evaluation's noise" in line and "over 5 trials" in line
    assert "first rung -1.00 < 0.7: the data supports --grace-epochs 2" in line
    metrics = result.metrics()
    assert metrics["asha_cuts"] == 2 and metrics["asha_cuts_beyond_noise"] == 1
    assert metrics["first_rung_spearman"] == pytest.approx(-1) and metrics["suggested_grace_epochs"] == 2
    # z stopped at epoch 1 though its score cleared the cut-off: unless it ended by itself, that is reported
    assert check(curves(), max_epochs=4, grace=1, rf=2).mismatches == ("z",)


def test_rung_check_says_when_too_few_trials_finished_and_when_no_epoch_ranks_well():
    few = {t: pts for t, pts in curves().items() if t in "abx"}
    assert "too few" in check(few, max_epochs=4, grace=1, rf=2).line()
    backwards = {  # every epoch before the last ranks them backwards; each rung sees them in rising order
        t: [*(Point(e, 1.4 - final, 0.01, 1.4 - final) for e in (1, 2, 3)), Point(4, final, 0.01, 9)]
        for t, final in zip("abcde", (0.5, 0.6, 0.7, 0.8, 0.9), strict=True)
    }
    result = check(backwards, max_epochs=4, grace=1, rf=2)
    assert result.suggested_grace is None and not result.cuts and not result.mismatches
    assert "early stopping is not supported (--grace-epochs 4)" in result.line()


def test_milestones_are_rays_rungs_and_spearman_is_scipys():
    from ray.tune.schedulers.async_hyperband import _Bracket
    from scipy.stats import spearmanr

    for max_t, grace, rf in ((60, 5, 3), (10, 2, 2), (2, 1, 2), (3, 1, 2), (4, 4, 2)):
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs if m < max_t)
        assert list(milestones(max_epochs=max_t, grace=grace, rf=rf)) == ray_rungs
    x, y = [0.1, 0.3, 0.3, 0.2, 0.9, 0.5], [0.2, 0.1, 0.4, 0.4, 0.8, 0.3]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# --- --select through a real Tune run ---------------------------------------------------------------------


def opposite_curves(config):
    """acc_val rises with k, acc falls: ASHA keeps every trial on acc_val and cuts on acc."""
    from ray import tune

    for epoch in (1, 2, 3):
        tune.report({"epoch": epoch, "acc_val": config["k"] / 10, "acc": (2 - config["k"]) / 10})


def pick_k(trial):
    trial.suggest_categorical("k", [0, 1, 2])


def select_through_tune() -> None:
    """Run in a fresh process (RAY_AUTH_MODE must be set before ray is imported): the scheduler the driver
    builds from the options (search/arms.py), one trial at a time, k = 0, 1, 2 in order (presets), once
    per --select."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.arms import make_scheduler
    from search.digits import DIGITS
    from search.options import complete, parse
    from search.optuna_bridge import PresetOptunaSearch

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for select in ("val", "test"):
            argv = ["--select", select, "--num-samples", "3", "--max-epochs", "3", "--grace-epochs", "1"]
            args, parser = parse(DIGITS, [*argv, "--reduction-factor", "2", "--experiment", select])
            opts = complete(args, parser, DIGITS)
            searcher = PresetOptunaSearch(
                pick_k, metric=opts.decision, mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                max_epochs=3, presets={f"k{k}": {"k": k} for k in range(3)},
            )  # fmt: skip
            tuner = tune.Tuner(
                opposite_curves,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, 1),
                    scheduler=make_scheduler(opts, opts.arm),
                    num_samples=3,
                    reuse_actors=True,  # one worker process for every trial: seconds, not a start each
                ),
                run_config=tune.RunConfig(storage_path=opts.storage, name=select, verbose=0),
            )
            epochs = {r.config["k"]: r.metrics["epoch"] for r in tuner.fit()}
            print(f"{select} {opts.decision} {[epochs[k] for k in range(3)]}", flush=True)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_select_changes_what_asha_stops_on(tmp_path):
    code = "from tests.test_search_select import select_through_tune; select_through_tune()"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "CGAN_SEARCH_HOME": str(tmp_path),
        "RAY_AIR_NEW_OUTPUT": "0",
    }
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=420
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "val acc_val [3, 3, 3]" in out.stdout  # rising acc_val: every trial clears each cut-off
    assert "test acc [3, 1, 1]" in out.stdout  # falling acc: all but the first are cut at rung 1


def test_the_val_set_is_saved_on_the_parent_run_and_a_resumed_search_keeps_it(tmp_path, monkeypatch, capsys):
    """A new search logs its val set; a resumed one decides on the saved set even if today's draw differs."""
    import dataclasses
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from search.clevr import CLEVR
    from search.driver import ParentRun, Search, keep_val
    from search.options import complete, parse
    from search.prepare import Prepared
    from search.tracking import create_parent, ensure_experiment
    from trainers.data.labels import load_vocab, spec_file

    monkeypatch.setenv("CGAN_SEARCH_HOME", str(tmp_path))
    args, parser = parse(CLEVR, ["--select", "test", "--experiment", "x"])
    opts = complete(args, parser, CLEVR)
    conditions = with_val(iclevr_conditions(), iclevr_train_labels())
    data = SimpleNamespace(classes=load_vocab(spec_file("objects.json")))
    prepared = Prepared(data, "synthetic", tmp_path / "ev.pt", {}, conditions, {}, "oracle renders")
    search = Search(opts=opts, space=None, presets={}, concurrency=1, prepared=prepared)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(client, "x", tracking_uri=client.tracking_uri, artifact_root=tmp_path / "art")
    run_id = create_parent(client, exp, name="search-x", experiment_dir=str(tmp_path), tags={}, params={})
    first = keep_val(search, ParentRun(client, exp, run_id, str(tmp_path), resuming=False))
    assert (first.prepared.conditions[VAL] == conditions[VAL]).all()
    assert "optimistic" in capsys.readouterr().out  # --select test says so
    redrawn = {**conditions, VAL: val_conditions(iclevr_train_labels(), iclevr_conditions(), seed=7)}
    later = dataclasses.replace(search, prepared=dataclasses.replace(prepared, conditions=redrawn))
    resumed = keep_val(later, ParentRun(client, exp, run_id, str(tmp_path), resuming=True))
    assert (resumed.prepared.conditions[VAL] == conditions[VAL]).all()
    assert list(resumed.prepared.conditions) == [VAL, "test", "new_test"]
    assert "differs from today's draw: the saved one is kept" in capsys.readouterr().out
