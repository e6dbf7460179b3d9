"""Promotion without a search: trial runs made by hand in a real SQLite MLflow store (as the search's callback
makes them: Optuna-state tag, epoch metric, the parent's max_epochs param), each with a real trainer
checkpoint; the registered pyfunc model must rebuild the generator and map label sets to images. A pruned
trial with the highest acc is only ever promoted with --allow-pruned."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.promote import ChampionKept, PromoteError, choose, outranked_by, pareto_front, promote
from search.pyfunc import multi_hot
from search.tracking import PARENT_TAG, ROLE_TAG, STATE_TAG, TRIAL_TAG, create_parent, ensure_experiment
from trainers.config import TrainConfig
from trainers.data import ImageSet
from trainers.train import train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red cube", "blue sphere", "gray cylinder", "cyan cube")
TINY = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "projection", "d_norm": "spectral"}


INFOGAN = {"arch": "infogan", "loss": "nonsat", "g_cond": "none", "d_cond": "none", "d_norm": "batch",
           "disc_codes": len(CLASSES), "cont_codes": 2}  # fmt: skip


def checkpoint(tmp: Path, *, ema: float, recipe=TINY) -> Path:
    rng = np.random.default_rng(0)
    data = ImageSet(
        images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        labels=np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), 16)],
        files=tuple(f"f{i}" for i in range(16)),
        classes=CLASSES,
        fingerprint="tiny",
    )
    config = TrainConfig.from_dict({**recipe, "width": 4, "z_dim": 8, "batch_size": 4, "ema": ema})
    torch.set_num_threads(1)
    out = train(config, data, epochs=1, out_dir=tmp, evaluator=None, conditions={}, progress=False)
    return out["checkpoint"]


MAX_EPOCHS = 2
# name, final acc, final fid, ema, diverged, Optuna state, epochs trained
TRIALS = (
    ("a", 0.3, 5.0, 0.0, "false", "COMPLETE", 2),
    ("b", 0.5, 9.0, 0.99, "false", "COMPLETE", 2),
    ("c", 0.9, 1.0, 0.0, "true", "COMPLETE", 1),  # diverged in its second epoch
    ("d", 0.2, 7.0, 0.0, "false", "COMPLETE", 2),  # dominated by a (lower acc, higher FID)
    ("p", 0.95, 0.5, 0.0, "false", "PRUNED", 1),  # ASHA stopped it after a lucky first epoch
)


def trial_run(client, exp: str, parent: str, tmp: Path, name, acc, fid, ema, diverged, state, epochs):
    run_id = client.create_run(
        exp, run_name=name, tags={PARENT_TAG: parent, ROLE_TAG: "trial", TRIAL_TAG: name}
    ).info.run_id
    for step in range(1, epochs + 1):
        client.log_metric(run_id, "acc", acc * step / epochs, step=step)
        client.log_metric(run_id, "epoch", step, step=step)
    client.log_metric(run_id, "fid", fid, step=epochs)
    client.set_tag(run_id, "search.diverged", diverged)
    client.set_tag(run_id, STATE_TAG, state)
    if tmp is not None:  # one real trainer checkpoint per EMA setting, shared by the runs that use it
        path = tmp / f"ema{ema}" / "last.pt"
        path = path if path.is_file() else checkpoint(path.parent, ema=ema)
        client.log_artifact(run_id, str(path), artifact_path="checkpoint")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment with a parent run (max_epochs 2) and the TRIALS above. Shared by the tests of this
    module: each registers its own versions and checks only those."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("promote")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(client, "promo", tracking_uri=client.tracking_uri, artifact_root=tmp_path / "art")
    parent = create_parent(
        client, exp, name="search-promo", experiment_dir=str(tmp_path / "ray"),
        tags={"search.model_name": "tiny-cgan", "search.data_fingerprint": "tiny", "search.evaluator_fingerprint": "ev"},
        params={"max_epochs": MAX_EPOCHS},
    )  # fmt: skip
    for trial in TRIALS:
        trial_run(client, exp, parent, tmp_path, *trial)
    return client, tmp_path


def promoted(client, version) -> str:
    return client.get_model_version(version.name, version.version).tags["trial_id"]


def test_promote_registers_the_best_final_acc_and_tags_it(experiment):
    client, _ = experiment
    version = promote(client, "promo", log=lambda _: None)
    assert version.name == "tiny-cgan"  # the search's model name, from the parent run
    tags = client.get_model_version(version.name, version.version).tags
    assert tags["trial_id"] == "b" and tags["metric.acc"] == "0.5"  # c diverged, p was pruned
    assert tags["selection"] == "best final acc, among trials that ran to max_epochs"
    assert (
        tags["ema"] == "true" and tags["data_fingerprint"] == "tiny" and tags["evaluator_fingerprint"] == "ev"
    )
    assert client.get_model_version_by_alias("tiny-cgan", "champion").version == version.version


def test_fid_ranks_lowest_first_and_aliases_move(experiment):
    client, _ = experiment
    first = promote(client, "promo", alias="moves", log=lambda _: None)
    second = promote(client, "promo", metric="fid", alias="moves", log=lambda _: None)  # a: FID 5 < b's 9
    assert client.get_model_version(second.name, second.version).tags["trial_id"] == "a"
    assert client.get_model_version_by_alias("tiny-cgan", "moves").version == second.version != first.version


def test_a_pruned_trial_with_the_best_acc_is_promoted_only_with_allow_pruned(experiment):
    client, _ = experiment
    assert promoted(client, promote(client, "promo", alias="strict", log=lambda _: None)) == "b"
    loose = promote(client, "promo", alias="loose", allow_pruned=True, log=lambda _: None)
    assert promoted(client, loose) == "p"  # its one-epoch 0.95 beats every finished trial
    assert client.get_model_version(loose.name, loose.version).tags["optuna_state"] == "PRUNED"
    # by FID too: c (diverged, FID 1.0) is never a candidate, p's 0.5 wins once pruned trials count
    by_fid = promote(client, "promo", metric="fid", alias="loose-fid", allow_pruned=True, log=lambda _: None)
    assert promoted(client, by_fid) == "p"


def test_promote_ranks_by_the_metric_the_search_decided_on(experiment):
    """A search that decided on acc_val (its parent's search.decision_metric) is promoted by acc_val, not by
    the test accuracy it reports; --metric acc still ranks by acc, knowingly."""
    client, tmp = experiment
    exp = ensure_experiment(client, "promo-val", tracking_uri=client.tracking_uri, artifact_root=tmp / "art")
    parent = create_parent(
        client, exp, name="search-promo-val", experiment_dir=str(tmp / "ray-val"),
        tags={"search.model_name": "tiny-val", "search.decision_metric": "acc_val"},
        params={"max_epochs": MAX_EPOCHS},
    )  # fmt: skip
    for name, acc, acc_val in (("v", 0.3, 0.6), ("t", 0.5, 0.4)):  # v best on val, t on the test sets
        run_id = trial_run(client, exp, parent, tmp, name, acc, 5.0, 0.0, "false", "COMPLETE", MAX_EPOCHS)
        client.log_metric(run_id, "acc_val", acc_val, step=MAX_EPOCHS)
    version = promote(client, "promo-val", log=lambda _: None)
    tags = client.get_model_version(version.name, version.version).tags
    assert tags["trial_id"] == "v" and tags["selection"].startswith("best final acc_val")
    assert (
        promoted(client, promote(client, "promo-val", metric="acc", alias="by-test", log=lambda _: None))
        == "t"
    )


def test_pareto_rule_best_acc_within_the_fid_slack_of_the_front(experiment):
    """Finished front: a (0.3, FID 5) and b (0.5, FID 9); d (0.2, 7) is dominated. Slack 0.25: FID <= 6.25
    leaves a; slack 1: FID <= 10 lets b win on acc; with pruned trials, p (0.95, 0.5) dominates all."""
    client, _ = experiment
    multi = ("acc", "fid")
    assert (
        promoted(client, promote(client, "promo", objectives=multi, alias="front", log=lambda _: None)) == "a"
    )
    wide = promote(client, "promo", objectives=multi, fid_slack=1.0, alias="wide", log=lambda _: None)
    assert promoted(client, wide) == "b"
    assert "Pareto front" in client.get_model_version(wide.name, wide.version).tags["selection"]
    loose = promote(
        client, "promo", objectives=multi, allow_pruned=True, alias="loose-front", log=lambda _: None
    )
    assert promoted(client, loose) == "p"


def guard_search(client, tmp: Path, name: str, trials, *, judge: str = "ev", model: str = "guard-cgan"):
    """An experiment `name` of one search (model name `model`, data "tiny", evaluator `judge`) whose trials
    (name, acc, fid) all ran to max_epochs."""
    exp = ensure_experiment(client, name, tracking_uri=client.tracking_uri, artifact_root=tmp / "art")
    parent = create_parent(
        client, exp, name=f"search-{name}", experiment_dir=str(tmp / name),
        tags={"search.model_name": model, "search.data_fingerprint": "tiny", "search.evaluator_fingerprint": judge},
        params={"max_epochs": MAX_EPOCHS},
    )  # fmt: skip
    for trial, acc, fid in trials:
        trial_run(client, exp, parent, tmp, trial, acc, fid, 0.0, "false", "COMPLETE", MAX_EPOCHS)


def test_the_alias_only_moves_to_a_better_version_of_the_same_judge_unless_forced(experiment):
    """A later search whose best is worse (same data, same judge), or a promotion run twice, leaves @champion
    where it is and registers nothing; --force moves it; a version scored by another judge is not compared,
    so the alias moves."""
    client, tmp = experiment
    lines: list[str] = []
    guard_search(client, tmp, "guard-good", [("g", 0.6, 4.0)])
    first = promote(client, "guard-good", log=lines.append)
    with pytest.raises(ChampionKept, match="it is already this search's best; nothing registered"):
        promote(client, "guard-good", log=lines.append)  # twice: the same generator is not registered again
    guard_search(client, tmp, "guard-worse", [("w", 0.4, 3.0)])
    with pytest.raises(ChampionKept) as kept:
        promote(client, "guard-worse", log=lines.append)
    assert kept.value.version.version == first.version
    message = str(kept.value)
    assert f"kept models:/guard-cgan@champion at version {first.version}" in message
    assert "acc 0.6 vs 0.4" in message and "nothing registered" in message and "--force" in message
    assert [str(v.version) for v in client.search_model_versions("name='guard-cgan'")] == [str(first.version)]
    assert client.get_model_version_by_alias("guard-cgan", "champion").version == first.version

    forced = promote(client, "guard-worse", force=True, log=lines.append)
    assert promoted(client, forced) == "w"
    assert client.get_model_version_by_alias("guard-cgan", "champion").version == forced.version
    assert lines[-1].endswith(f"it was on version {first.version}: acc 0.6, --force"), lines[-1]

    # another judge: its 0.1 cannot be weighed against the 0.4 above
    guard_search(client, tmp, "guard-judge", [("j", 0.1, 9.0)], judge="other")
    other = promote(client, "guard-judge", log=lines.append)
    assert client.get_model_version_by_alias("guard-cgan", "champion").version == other.version
    assert "not compared: scored with another judge" in lines[-1], lines[-1]
    # the same judge as that version, and better: moves, and says what it beat
    guard_search(client, tmp, "guard-better", [("b", 0.3, 9.0)], judge="other")
    better = promote(client, "guard-better", log=lines.append)
    assert client.get_model_version_by_alias("guard-cgan", "champion").version == better.version
    assert lines[-1].endswith(f"it was on version {other.version}: acc 0.1"), lines[-1]


def test_a_kept_champion_is_one_line_and_exit_0_at_the_cli(experiment):
    """`python -m search.promote` after a worse search, as a job that promotes after every search runs it:
    not an error, so exit 0, the line that says why, and the URI that still serves the better version."""
    client, tmp = experiment
    guard_search(client, tmp, "cli-good", [("g", 0.6, 4.0)], model="cli-cgan")
    promote(client, "cli-good", log=lambda _: None)
    guard_search(client, tmp, "cli-worse", [("w", 0.4, 3.0)], model="cli-cgan")
    out = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", "cli-worse", "--tracking-uri", client.tracking_uri],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "models:/cli-cgan@champion", lines
    assert lines[-2].startswith("kept models:/cli-cgan@champion at version 1 (trial "), lines
    assert len(client.search_model_versions("name='cli-cgan'")) == 1


@pytest.mark.parametrize(
    ("old", "new", "objectives", "keeps"),
    [
        ({"metric.acc_val": "0.5"}, {"metric.acc_val": "0.4"}, ("acc_val",), True),
        ({"metric.acc_val": "0.4"}, {"metric.acc_val": "0.4"}, ("acc_val",), False),  # a tie moves
        ({"metric.fid": "3"}, {"metric.fid": "4"}, ("fid",), True),  # fid: lower is better
        ({"metric.fid": "5"}, {"metric.fid": "4"}, ("fid",), False),
        ({"metric.acc_val": "0.5", "metric.fid": "3"}, {"metric.acc_val": "0.4", "metric.fid": "3"}, ("acc_val", "fid"), True),
        ({"metric.acc_val": "0.5", "metric.fid": "5"}, {"metric.acc_val": "0.4", "metric.fid": "3"}, ("acc_val", "fid"), False),
        ({"metric.acc": "0.9"}, {"metric.acc_val": "0.4"}, ("acc_val",), False),  # nothing to compare
        ({"metric.acc_val": "nan"}, {"metric.acc_val": "0.4"}, ("acc_val",), False),
        ({"metric.acc_val": "0.5", "evaluator_fingerprint": "x"}, {"metric.acc_val": "0.4"}, ("acc_val",), False),
        ({"metric.acc_val": "0.5", "data_fingerprint": ""}, {"metric.acc_val": "0.4"}, ("acc_val",), False),
    ],
)  # fmt: skip
def test_outranked_by_keeps_only_a_comparable_better_version(old, new, objectives, keeps):
    same = {"data_fingerprint": "d", "evaluator_fingerprint": "e"}
    assert bool(outranked_by({**same, **old}, {**same, **new}, objectives)) is keeps


def test_pareto_front_and_choice_rules():
    rows = [
        {"trial_id": "a", "acc": 0.3, "fid": 5.0},
        {"trial_id": "b", "acc": 0.5, "fid": 9.0},
        {"trial_id": "d", "acc": 0.2, "fid": 7.0},
        {"trial_id": "e", "acc": 0.3, "fid": 5.0},  # ties a: neither dominates the other
        {"trial_id": "f", "acc": 0.9, "fid": math.inf},  # no finite FID: never on the front
    ]
    assert [r["trial_id"] for r in pareto_front(rows, ("acc", "fid"))] == ["a", "b", "e"]
    assert choose(rows, objectives=("acc", "fid"), fid_slack=0.0)[0]["trial_id"] == "a"  # tie: trial id
    assert choose(rows, objectives=("acc", "fid"), fid_slack=math.inf)[0]["trial_id"] == "b"
    assert choose(rows[:3], objectives=("fid",))[0]["trial_id"] == "a"
    assert choose([], objectives=("acc", "fid"))[0] is None


def test_only_pruned_trials_is_one_line_naming_allow_pruned(experiment, tmp_path):
    client, _ = experiment
    exp = ensure_experiment(client, "pruned-only", tracking_uri=client.tracking_uri, artifact_root=tmp_path)
    parent = create_parent(
        client, exp, name="s", experiment_dir=str(tmp_path), tags={}, params={"max_epochs": 3}
    )
    trial_run(client, exp, parent, None, "q", 0.7, 2.0, 0.0, "false", "PRUNED", 1)
    out = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", "pruned-only", "--tracking-uri",
         client.tracking_uri, "--objectives", "acc,fid"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "1 pruned by ASHA" in line and "0 that ran to max_epochs" in line and "--allow-pruned" in line


def test_pyfunc_model_rebuilds_the_generator_from_plain_data(experiment):
    import mlflow
    import pandas as pd

    client, _ = experiment
    version = promote(client, "promo", alias="pyfunc", log=lambda _: None)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    images = model.predict(pd.DataFrame({"labels": [["red cube"], ["blue sphere", "cyan cube"]]}))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
    slim = torch.load(next(folder.rglob("generator.pt")), weights_only=True)  # plain data, no pickled code
    assert set(slim) == {"config", "data", "ema", "state_dict"}
    # the model's code is our file (models from code), not a pickled PythonModel; nothing else is a pickle
    assert (folder / "pyfunc_model.py").read_text() == (ROOT / "search" / "pyfunc_model.py").read_text()
    assert [p.name for p in folder.rglob("*.pkl")] == []
    assert (folder / "input_example.json").is_file()


def test_an_infogan_generator_is_registered_and_says_when_loaded_that_it_takes_no_labels(experiment):
    """InfoGAN's generator is driven by codes, not labels: promotion registers it (no signature, no input
    example: there is no label input to describe), and loading it as a label-to-image model says why not."""
    import mlflow

    client, tmp = experiment
    exp = ensure_experiment(
        client, "promo-infogan", tracking_uri=client.tracking_uri, artifact_root=tmp / "art"
    )
    parent = create_parent(
        client, exp, name="search-infogan", experiment_dir=str(tmp / "ray-infogan"),
        tags={"search.model_name": "infogan-cgan"}, params={"max_epochs": MAX_EPOCHS},
    )  # fmt: skip
    run_id = trial_run(client, exp, parent, None, "i", 0.5, 5.0, 0.0, "false", "COMPLETE", MAX_EPOCHS)
    client.log_artifact(run_id, str(checkpoint(tmp / "infogan", ema=0.0, recipe=INFOGAN)), "checkpoint")
    version = promote(client, "promo-infogan", log=lambda _: None)
    assert (
        json.loads(client.get_model_version(version.name, version.version).tags["config"])["arch"]
        == "infogan"
    )
    mlflow.set_tracking_uri(client.tracking_uri)
    with pytest.raises(ValueError, match="not conditioned on labels .*cannot map label sets to images"):
        mlflow.pyfunc.load_model("models:/infogan-cgan@champion")


def test_nothing_to_promote_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", "nope", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no MLflow experiment named 'nope'" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objectives", "fid"], "--objectives: expected 'acc' or 'acc,fid', got 'fid'"),
        (["--fid-slack", "-1"], "--fid-slack: expected a number >= 0"),
        (["--fid-slack", "nan"], "--fid-slack: expected a number >= 0"),
        (["--metric", "acc", "--objectives", "acc,fid"], "--metric acc with --objectives acc,fid"),
    ],
)
def test_bad_selection_flags_are_one_line_and_exit_2(args, message, capsys):
    from search.promote import main

    with pytest.raises(SystemExit) as exit_:
        main(["--experiment", "x", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err


def test_unknown_experiment_raises(experiment):
    client, _ = experiment
    with pytest.raises(PromoteError, match="no MLflow experiment"):
        promote(client, "missing", log=lambda _: None)


def test_multi_hot_names_unknown_labels():
    assert multi_hot([["blue sphere", "red cube"]], CLASSES).tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="unknown label 'pink cube'"):
        multi_hot([["pink cube"]], CLASSES)
