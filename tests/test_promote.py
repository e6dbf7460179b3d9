"""Promotion without a search: trial runs made by hand (as the search's callback makes them), each with a real
trainer checkpoint; the registered pyfunc model must rebuild the generator and map label sets to images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.promote import PromoteError, promote
from search.pyfunc import multi_hot
from search.tracking import PARENT_TAG, ROLE_TAG, STATE_TAG, TRIAL_TAG, create_parent, ensure_experiment
from trainers.config import TrainConfig
from trainers.data import ImageSet
from trainers.train import train

CLASSES = ("red cube", "blue sphere", "gray cylinder", "cyan cube")
TINY = {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "projection", "d_norm": "spectral"}


def checkpoint(tmp: Path, *, ema: float) -> Path:
    rng = np.random.default_rng(0)
    data = ImageSet(
        images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        labels=np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), 16)],
        files=tuple(f"f{i}" for i in range(16)),
        classes=CLASSES,
        fingerprint="tiny",
    )
    config = TrainConfig.from_dict({**TINY, "width": 4, "z_dim": 8, "batch_size": 4, "ema": ema})
    torch.set_num_threads(1)
    out = train(config, data, epochs=1, out_dir=tmp, evaluator=None, conditions={}, progress=False)
    return out["checkpoint"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment with a parent run and three trial runs: acc 0.3 / 0.5 (with EMA) / 0.9 but diverged.
    Shared by the tests of this module: each registers its own versions and checks only those."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("promote")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(client, "promo", tracking_uri=client.tracking_uri, artifact_root=tmp_path / "art")
    parent = create_parent(
        client, exp, name="search-promo", experiment_dir=str(tmp_path / "ray"),
        tags={"search.model_name": "tiny-cgan", "search.data_fingerprint": "tiny", "search.evaluator_fingerprint": "ev"},
        params={},
    )  # fmt: skip
    for name, acc, fid, ema, diverged in (
        ("a", 0.3, 5.0, 0.0, "false"),
        ("b", 0.5, 9.0, 0.99, "false"),
        ("c", 0.9, 1.0, 0.0, "true"),
    ):
        run = client.create_run(
            exp, run_name=name, tags={PARENT_TAG: parent, ROLE_TAG: "trial", TRIAL_TAG: name}
        )
        run_id = run.info.run_id
        for step, value in ((1, acc / 2), (2, acc)):
            client.log_metric(run_id, "acc", value, step=step)
        client.log_metric(run_id, "fid", fid, step=2)
        client.set_tag(run_id, "search.diverged", diverged)
        client.set_tag(run_id, STATE_TAG, "COMPLETE")
        client.log_artifact(run_id, str(checkpoint(tmp_path / name, ema=ema)), artifact_path="checkpoint")
        client.set_terminated(run_id, "FINISHED")
    return client, tmp_path


def test_promote_registers_the_best_final_acc_and_tags_it(experiment):
    client, _ = experiment
    version = promote(client, "promo", log=lambda _: None)
    assert version.name == "tiny-cgan"  # the search's model name, from the parent run
    tags = client.get_model_version(version.name, version.version).tags
    assert tags["trial_id"] == "b" and tags["metric.acc"] == "0.5"  # c scored higher but diverged
    assert (
        tags["ema"] == "true" and tags["data_fingerprint"] == "tiny" and tags["evaluator_fingerprint"] == "ev"
    )
    assert client.get_model_version_by_alias("tiny-cgan", "champion").version == version.version


def test_fid_ranks_lowest_first_and_aliases_move(experiment):
    client, _ = experiment
    first = promote(client, "promo", log=lambda _: None)
    second = promote(client, "promo", metric="fid", alias="champion", log=lambda _: None)
    assert client.get_model_version(second.name, second.version).tags["trial_id"] == "a"
    assert (
        client.get_model_version_by_alias("tiny-cgan", "champion").version == second.version != first.version
    )


def test_pyfunc_model_rebuilds_the_generator_from_plain_data(experiment):
    import mlflow
    import pandas as pd

    client, _ = experiment
    version = promote(client, "promo", log=lambda _: None)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    images = model.predict(pd.DataFrame({"labels": [["red cube"], ["blue sphere", "cyan cube"]]}))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
    slim = torch.load(next(folder.rglob("generator.pt")), weights_only=True)  # plain data, no pickled code
    assert set(slim) == {"config", "data", "ema", "state_dict"}


def test_nothing_to_promote_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "search.promote", "--experiment", "nope", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no MLflow experiment named 'nope'" in out.stderr.strip().splitlines()[-1]


def test_unknown_experiment_raises(experiment):
    client, _ = experiment
    with pytest.raises(PromoteError, match="no MLflow experiment"):
        promote(client, "missing", log=lambda _: None)


def test_multi_hot_names_unknown_labels():
    assert multi_hot([["blue sphere", "red cube"]], CLASSES).tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="unknown label 'pink cube'"):
        multi_hot([["pink cube"]], CLASSES)
