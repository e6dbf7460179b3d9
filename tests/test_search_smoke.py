"""One real smoke search (Ray, MLflow, the trainer, CPU), shared by every assertion about what it leaves behind,
then promotion, generation and the pyfunc model built from it."""

from __future__ import annotations

import csv
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_search_support import ROOT, mlflow_runs, run_search, search_env, tune_trials
from trainers.config import TrainConfig

pytestmark = pytest.mark.slow
EXPERIMENT = "smoke"
TRIALS = 6


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    home = tmp_path_factory.getbasetemp() / "search-home"  # shared by the search test modules: caches reused
    home.mkdir(exist_ok=True)
    out, wall = run_search(home, "--smoke-test", "--num-samples", str(TRIALS), "--experiment", EXPERIMENT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = mlflow_runs(home, EXPERIMENT)
    from search.optuna_bridge import load_study_and_trials

    experiment_dir = home / "ray_results" / EXPERIMENT
    study, numbers = load_study_and_trials(str(experiment_dir))
    return SimpleNamespace(
        home=home,
        out=out,
        wall=wall,
        client=client,
        parents=parents,
        children=children,
        experiment_dir=experiment_dir,
        trials=tune_trials(experiment_dir),
        study=study,
        numbers=numbers,
    )


def test_smoke_search_finishes_every_trial(smoke):
    # No timed assert: how long it takes depends on the machine's load (BENCHMARKS.md holds speed figures).
    assert len(smoke.trials) == TRIALS
    assert "open the MLflow UI: mlflow ui --backend-store-uri sqlite:///" in smoke.out.stdout
    assert "ceiling (oracle renders)" in smoke.out.stdout and "best trial" in smoke.out.stdout


def test_one_parent_and_one_child_run_per_trial(smoke):
    assert len(smoke.parents) == 1
    parent = smoke.parents[0]
    assert len(smoke.children) == TRIALS
    assert {r.data.tags["mlflow.parentRunId"] for r in smoke.children} == {parent.info.run_id}
    assert {r.data.tags["ray.trial_id"] for r in smoke.children} == set(smoke.trials)
    tags = parent.data.tags
    assert tags["search.space"].endswith("smoke.yaml") and len(tags["search.space_sha256"]) == 64
    for key in ("search.data_fingerprint", "search.evaluator_fingerprint", "search.code_sha256"):
        assert tags[key], key
    assert parent.info.status == "FINISHED"


def test_each_child_has_params_metrics_by_epoch_grids_and_checkpoint(smoke):
    client = smoke.client
    for run in smoke.children:
        results = smoke.trials[run.data.tags["ray.trial_id"]]
        config = results[-1]["config"]
        assert run.data.params == {k: str(v) for k, v in config.items()}
        assert not set(config) & set(run.data.metrics), "config values must not be logged as metrics"
        epochs = [r["epoch"] for r in results]
        history = client.get_metric_history(run.info.run_id, "acc")
        assert [m.step for m in history] == epochs
        assert {"acc_test", "acc_new_test", "fid", "diversity"} <= set(run.data.metrics)
        grids = [a.path for a in client.list_artifacts(run.info.run_id, "grids")]
        assert grids == [f"grids/epoch_{e:03d}" for e in epochs]
        files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, grids[-1])}
        # the val set the decisions read, and the reported sets
        assert files == {"val.png", "test.png", "new_test.png"}
        checkpoint = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        # The best evaluation's generator only (no D, no optimizer state); pruned trials keep none by default.
        pruned = run.data.tags["optuna.state"] == "PRUNED"
        assert checkpoint == (set() if pruned else {"generator.pt", "report.json"}), checkpoint
        assert run.info.status == "FINISHED"


def test_asha_stopped_trials_are_pruned_in_the_optuna_study(smoke):
    states = {tid: smoke.study.trials[n].state.name for tid, n in smoke.numbers.items()}
    assert set(states) == set(smoke.trials)
    pruned = [tid for tid, s in states.items() if s == "PRUNED"]
    assert pruned, states
    for tid in pruned:
        trial = smoke.study.trials[smoke.numbers[tid]]
        epochs = [r["epoch"] for r in smoke.trials[tid]]
        assert max(epochs) < 3 and sorted(trial.intermediate_values) == epochs
    for run in smoke.children:
        assert run.data.tags["optuna.state"] == states[run.data.tags["ray.trial_id"]]


def test_ended_trials_keep_one_generator_and_no_full_checkpoint(smoke):
    """Tune keeps the latest checkpoint only; once a trial ends its full checkpoint is dropped and the
    generator of its best evaluation stays (a pruned trial's is dropped too, by default); the trial
    removed its own scratch folder."""
    import tempfile

    import torch

    states = {r.data.tags["ray.trial_id"]: r.data.tags["optuna.state"] for r in smoke.children}
    for folder in smoke.experiment_dir.glob("trial_*"):
        (checkpoint,) = folder.glob("checkpoint_*")
        names = {p.name for p in checkpoint.iterdir()}
        pruned = states[folder.name.removeprefix("trial_")] == "PRUNED"
        assert names == {"report.json", "grids"} | (set() if pruned else {"generator.pt"}), names
        assert not list(folder.rglob("*.pt")) if pruned else len(list(folder.rglob("*.pt"))) == 1
        if not pruned:
            slim = torch.load(checkpoint / "generator.pt", weights_only=True)
            assert set(slim) == {"config", "data", "ema", "state_dict"}
            report = json.loads((checkpoint / "report.json").read_text())
            assert 1 <= report["best_epoch"] <= report["epoch"]
    scratch = Path(tempfile.gettempdir()) / "cgan-search-trials"
    assert not list(scratch.glob(f"{EXPERIMENT}-*"))


def test_leaderboard_plots_and_study_are_logged_on_the_parent(smoke):
    client, parent = smoke.client, smoke.parents[0].info.run_id
    text = Path(client.download_artifacts(parent, "leaderboard.csv", str(smoke.home / "dl"))).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == TRIALS
    for column in ("trial_id", "state", "epochs", "acc", "acc_test", "acc_new_test", "fid", "config"):
        assert column in rows[0]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert json.loads(rows[0]["config"])["arch"] == "dcgan"
    optuna_files = {Path(a.path).name for a in client.list_artifacts(parent, "optuna")}
    assert {"study.pkl", "optimization_history.png"} <= optuna_files
    study = pickle.loads(
        Path(client.download_artifacts(parent, "optuna/study.pkl", str(smoke.home / "dl"))).read_bytes()
    )
    assert len(study.trials) == TRIALS


def test_decisions_read_acc_val_on_a_saved_val_set_and_asha_checks_its_cuts(smoke):
    """Issue 15: the log, leaderboard and parent run show acc_val decisions, the test accuracies and the
    rung-validity line; the val set on the parent run is disjoint from both test sets."""
    out, client, parent = smoke.out.stdout, smoke.client, smoke.parents[0]
    assert "decisions read acc_val" in out and "ASHA check: " in out and "best final acc_val" in out
    assert parent.data.tags["search.decision_metric"] == "acc_val" and parent.data.params["select"] == "val"
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"val_conditions.json", "rung_check.json", "rung_check.png", "leaderboard.csv"} <= files
    dl = str(smoke.home / "dl-val")
    saved = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "val_conditions.json", dl)).read_text()
    )
    test_sets = {tuple(sorted(r)) for split in ("test", "new_test") for r in _label_sets(split)}
    assert len(saved["val"]) == 96 and not {tuple(sorted(r)) for r in saved["val"]} & test_sets
    for key in ("asha_cuts", "asha_cuts_beyond_noise", "asha_n_finished"):
        assert key in parent.data.metrics, key
    check = json.loads(Path(client.download_artifacts(parent.info.run_id, "rung_check.json", dl)).read_text())
    assert check["metric"] == "acc_val" and check["line"] in out and not check["mismatches"]
    for run in smoke.children:
        assert {"acc_val", "acc_val_std", "acc", "acc_test", "acc_new_test"} <= set(run.data.metrics)
        assert run.data.metrics["acc"] == pytest.approx(
            (run.data.metrics["acc_test"] + run.data.metrics["acc_new_test"]) / 2
        )


def _label_sets(split: str) -> list[list[str]]:
    return json.loads((ROOT / "trainers" / "data" / "spec" / f"{split}.json").read_text())


@pytest.fixture(scope="module")
def champion(smoke):
    env = search_env(smoke.home)
    out = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", EXPERIMENT],
        capture_output=True, text=True, env=env, timeout=120, cwd=smoke.home,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_promote_registers_a_version_with_alias_champion(smoke, champion):
    version = smoke.client.get_model_version_by_alias("clevr-cgan", "champion")
    max_epochs = float(smoke.parents[0].data.params["max_epochs"])
    finished = [  # ran to max_epochs without diverging: a pruned trial is never promoted by default
        r
        for r in smoke.children
        if r.data.tags["optuna.state"] == "COMPLETE"
        and r.data.tags.get("search.diverged") != "true"
        and r.data.metrics["epoch"] == max_epochs
    ]
    # the search's decision metric; ties (smoke trials often score the same val draws alike) by trial id, as
    # promotion breaks them: max() alone took whichever tied run MLflow listed first, by start time
    best = min(finished, key=lambda r: (-r.data.metrics["acc_val"], r.data.tags["ray.trial_id"]))
    assert version.tags["trial_run_id"] == best.info.run_id
    sampled = smoke.trials[best.data.tags["ray.trial_id"]][-1]["config"]
    registered = json.loads(version.tags["config"])  # the full TrainConfig: sampled values + defaults
    # in the current spelling (d_norm: spectral was sampled: no norm + spectral weights), the same recipe
    assert TrainConfig.from_dict({**registered, **sampled}) == TrainConfig.from_dict(registered)
    for key in (
        "data_fingerprint",
        "evaluator_fingerprint",
        "metric.acc",
        "metric.acc_val",
        "metric.acc_test",
        "metric.acc_new_test",
    ):
        assert version.tags[key], key
    assert version.tags["data_fingerprint"] == smoke.parents[0].data.tags["search.data_fingerprint"]


def test_generate_writes_32_images_of_the_right_size(smoke, champion, tmp_path):
    from PIL import Image

    out = subprocess.run(
        [sys.executable, "-m", "search.generate", "--model", "models:/clevr-cgan@champion", "--labels",
         str(ROOT / "trainers" / "data" / "spec" / "new_test.json"), "--out", str(tmp_path / "grid.png"),
         "--per-image", str(tmp_path / "images")],
        capture_output=True, text=True, env=search_env(smoke.home), timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 32
    assert {Image.open(p).size for p in images} == {(16, 16)}  # the smoke budget trains at 16x16
    assert (tmp_path / "grid.png").is_file()


def test_registered_model_loads_as_pyfunc_and_maps_label_sets_to_images(smoke, champion):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{smoke.home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/clevr-cgan@champion")
    labels = pd.DataFrame({"labels": [["red cube"], ["blue sphere", "gray cylinder", "cyan cube"]]})
    a = model.predict(labels, params={"seed": 1})
    b = model.predict(labels, params={"seed": 1})
    assert a.shape == (2, 16, 16, 3) and str(a.dtype) == "uint8"
    assert (a == b).all()  # the seed fixes the noise
    with pytest.raises(Exception, match="unknown label"):
        model.predict(pd.DataFrame({"labels": [["pink cube"]]}))
