"""Multi-objective search on digits with InfoGAN in the space: every trial reports the same metric keys, the
leaderboard marks Optuna's Pareto front, a Pareto plot is logged on the search run, and promotion from the
front follows its documented rule among trials that ran to max_epochs. Plus the trainer-level key check."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.promote import FID_SLACK, choose, eligible, pareto_front, trial_rows
from tests.test_search_support import mlflow_runs, run_search, search_env
from trainers.config import TrainConfig
from trainers.evaluator import Evaluator, ResNet18, feature_stats, frechet_distance
from trainers.evaluator.protocol import evaluate_codes, metric_keys
from trainers.train import train

from .tiny import N_CLASSES, TINY, random_set

EXPERIMENT = "pareto"
TRIALS = 3  # the two presets (InfoGAN, a labelled DCGAN) and one sampled trial
MAX_EPOCHS = 2
CONDITIONS = {"test": np.eye(N_CLASSES, dtype=np.float32), "new_test": np.eye(N_CLASSES, dtype=np.float32)}


@pytest.mark.parametrize("arch", ["dcgan", "infogan"])
def test_infogan_and_conditional_trainers_report_the_same_keys(arch, tmp_path, one_thread):
    cond = "none" if arch == "infogan" else None
    config = TrainConfig.from_dict(
        {"arch": arch, "loss": "nonsat", "g_cond": cond or "concat", "d_cond": cond or "channel",
         "d_norm": "spectral", **TINY, "disc_codes": N_CLASSES}
    )  # fmt: skip
    torch.manual_seed(0)
    judge = Evaluator(ResNet18(n_classes=N_CLASSES, width=4), device="cpu")
    reports = []
    data = random_set(8, one_hot=True)
    train(config, data, epochs=1, out_dir=tmp_path, evaluator=judge, conditions=CONDITIONS,
          callback=reports.append, progress=False)  # fmt: skip
    metrics = reports[0].metrics
    assert set(metric_keys(CONDITIONS)) <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in metric_keys(CONDITIONS)), metrics
    assert metrics["fid"] > 0 and metrics["diversity"] >= 0


class CodeReader:
    """A judge that reads the code value a test generator wrote into pixel (0, 0) and answers a permuted
    class; its features are the pixels. Duck-typed like trainers.evaluator.Evaluator."""

    n_classes = N_CLASSES
    perm = torch.tensor([3, 1, 4, 0, 2])
    _real_cache = None

    def __init__(self):
        self.batches = []

    def features(self, images, batch_size=256):
        return images.flatten(1)

    def scores_and_features(self, images, batch_size=256):
        self.batches.append(len(images))
        value = images[:, 0, 0, 0].round().long()
        return torch.nn.functional.one_hot(self.perm[value], N_CLASSES).float(), self.features(images)


def write_code(disc, gen):
    """(B,) code values -> (B, 3, 2, 2) images: the value plus a little noise from `gen`."""
    return disc.float()[:, None, None, None] + 0.1 * torch.rand(len(disc), 3, 2, 2, generator=gen)


def test_code_protocol_of_a_perfect_generator_and_its_fid_sample_size():
    """Matched accuracy 1 with no spread under any permutation of classes; FID on as many images as the
    conditional protocol draws for the same condition sets (n_draws x rows: 4 x 10 = 40, 8 per value)."""
    judge, real = CodeReader(), torch.rand(30, 3, 2, 2) * 4
    out = evaluate_codes(write_code, judge, CONDITIONS, n_codes=N_CLASSES, real=real, per_code=20, n_draws=4)
    assert tuple(out) == metric_keys(CONDITIONS)
    assert out["acc"] == out["acc_test"] == out["acc_new_test"] == 1.0 and out["acc_std"] == 0.0
    assert judge.batches == [20] * N_CLASSES  # one batch of per_code images per code value
    first = [write_code(torch.full((20,), v), torch.Generator().manual_seed(v))[:8] for v in range(N_CLASSES)]
    expected = frechet_distance(feature_stats(torch.cat(first).flatten(1)), feature_stats(real.flatten(1)))
    assert out["fid"] == pytest.approx(expected)
    assert out["diversity"] > 0


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    home = tmp_path_factory.getbasetemp() / "search-home"  # shared by the search test modules: caches reused
    home.mkdir(exist_ok=True)
    out, wall = run_search(
        home,
        *("--smoke-test", "--space", "digits.yaml", "--objectives", "acc,fid", "--num-samples", str(TRIALS)),
        *("--max-epochs", str(MAX_EPOCHS), "--presets", "infogan_digits,wgan_gp_instance"),
        *("--experiment", EXPERIMENT),
        entry="digits",
        timeout=600,  # ~2 minutes alone on 2 cores; far more when the machine is shared
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = mlflow_runs(home, EXPERIMENT)
    return home, out, wall, client, parents[0], children


# --select val (the default): the study, the leaderboard's front and promotion all read acc_val beside FID
DECISION = ("acc_val", "fid")


@pytest.mark.slow
def test_multi_objective_digits_search_with_infogan(search):
    home, out, wall, client, parent, children = search
    print(f"search wall {wall:.0f} s")
    assert len(children) == TRIALS
    archs = {r.data.params["arch"] for r in children}
    assert archs == {"infogan", "dcgan"}, archs  # both presets ran: InfoGAN beside a labelled GAN
    keys = set(metric_keys(["digits"]))
    for run in children:  # every trial, InfoGAN too, reports acc and FID (the objectives) and the rest
        assert keys <= set(run.data.metrics), (run.data.params["arch"], sorted(run.data.metrics))

    # The leaderboard's pareto column is Optuna's best_trials, and the same front as promotion's rule
    # computes from MLflow over the COMPLETE trials.
    text = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(home / "dl-pareto"))
    rows = list(csv.DictReader(io.StringIO(Path(text).read_text())))
    marked = {r["trial_id"] for r in rows if r["pareto"] == "True"}
    from search.optuna_bridge import load_study_and_trials

    study, numbers = load_study_and_trials(str(home / "ray_results" / EXPERIMENT))
    best = {n.number for n in study.best_trials}
    assert marked and marked == {tid for tid, n in numbers.items() if n in best}
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    mlflow_rows = trial_rows(client, exp)
    complete = [r for r in mlflow_rows if r["state"] == "COMPLETE"]
    assert {r["trial_id"] for r in pareto_front(complete, DECISION)} == marked
    assert "pareto.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # The best trial line, and promotion from the front, follow the rule among trials that ran 2 epochs.
    chosen, _ = choose(eligible(mlflow_rows, allow_pruned=False), objectives=DECISION, fid_slack=FID_SLACK)
    assert chosen["trial_id"] in marked and chosen["epochs"] == MAX_EPOCHS
    assert re.search(rf"best trial {chosen['trial_id']} \(best acc_val on the Pareto front", out.stdout)
    assert "promote the best: python -m search.promote --experiment pareto --objectives acc,fid" in out.stdout
    promoted = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", EXPERIMENT, "--objectives", "acc,fid"],
        capture_output=True, text=True, env=search_env(home), timeout=120, cwd=home,
    )  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    version = client.get_model_version_by_alias("digits-cgan", "champion")
    assert version.tags["trial_id"] == chosen["trial_id"] and version.tags["optuna_state"] == "COMPLETE"
    assert version.tags["selection"].startswith("best acc_val on the Pareto front (acc_val, fid) with fid <=")
