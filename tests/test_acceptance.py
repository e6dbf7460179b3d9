"""The product's acceptance test: what a user of the course has, walked end to end through the command lines.

The user has the official layout at full size (320x240 PNGs, RGBA and RGB, in iclevr/ beside train.json,
objects.json, test.json and new_test.json) and the official judge file, `torch.save({"model": state_dict})`
with no sidecar. Search -> promote -> generate -> mlflow.pyfunc, each as a subprocess a user would start.
Small on purpose (24 scenes, a one-epoch width-4 judge, 2 one-epoch trials at 16x16): it checks the path,
not the quality; the floor is 0 because such a judge is weak, and what it measured is checked instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_search_support import mlflow_runs, search_command, search_env

pytestmark = pytest.mark.slow
EXPERIMENT = "acceptance"
SCENES = 24  # 72 images: enough for a search to run, a few seconds to render at 320x240


def course_folder(root: Path) -> Path:
    """The course's layout, rendered: 320x240 frames, the images in iclevr/, every other one RGBA."""
    from trainers.data.render import render_training_set

    render_training_set(root, scenes=SCENES, seed=3, size=(320, 240), workers=1, progress=False)
    (root / "images").rename(root / "iclevr")  # the folder name of the course's archive
    for i, png in enumerate(sorted((root / "iclevr").glob("*.png"))):
        if i % 2:  # the course's PNGs are RGBA (opaque); accept both
            Image.open(png).convert("RGBA").save(png)
    return root


def official_judge(data_root: Path, out: Path) -> Path:
    """A freshly fitted tiny judge, saved as the official file is: the state_dict under "model", nothing else."""
    from trainers.data import read_iclevr
    from trainers.evaluator import FitConfig, fit

    ds = read_iclevr(data_root, size=64, progress=False)  # no pack: the search must build its own caches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it saves
    ev, _ = fit(
        ds.images,
        ds.labels,
        files=ds.files,
        classes=ds.classes,
        config=FitConfig(width=4, epochs=1, batch_size=16),
        device="cpu",
        progress=False,
    )
    torch.set_num_threads(threads)
    torch.save({"model": {k: v.contiguous() for k, v in ev.net.state_dict().items()}}, out)
    return out


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("acceptance")
    data = course_folder(root / "iclevr-course")
    judge = official_judge(data, root / "classifier_weight.pth")
    home = root / "home"
    env = search_env(home)
    env.pop("CGAN_SEARCH_CACHE", None)  # the search's own caches, under its home
    uri = f"sqlite:///{root / 'mlflow.db'}"
    search = subprocess.run(
        search_command(
            "clevr", "--data", str(data), "--evaluator", str(judge), "--evaluator-floor", "0",
            "--smoke-test", "--num-samples", "2", "--max-epochs", "1",
            "--experiment", EXPERIMENT, "--storage", str(root / "ray"), "--tracking-uri", uri,
        ),
        capture_output=True, text=True, timeout=420, env=env, cwd=root,
    )  # fmt: skip
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]

    def cli(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=120, cwd=root
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    promoted = cli("search.promote", "--experiment", EXPERIMENT, "--tracking-uri", uri)
    generated = cli(
        "search.generate", "--model", "models:/clevr-cgan@champion", "--labels", str(data / "new_test.json"),
        "--out", str(root / "grid.png"), "--per-image", str(root / "images"), "--tracking-uri", uri,
    )  # fmt: skip
    return SimpleNamespace(
        root=root, data=data, judge=judge, home=home, uri=uri, search=search,
        promoted=promoted, generated=generated,
    )  # fmt: skip


def test_the_official_judge_is_measured_on_the_users_images_and_the_floor_applies_to_that(walk):
    out = walk.search.stdout
    assert "no sidecar (an official-format file); measuring it on your labelled images" in out
    assert f"on all {3 * SCENES} labelled images of {walk.data} at 64x64" in out
    assert "a judge trained on them will look better than it is" in out
    assert "The floor 0.000 is applied to this figure" in out
    _, parents, children = mlflow_runs(walk.home, EXPERIMENT, walk.uri)
    assert len(parents) == 1 and len(children) == 2
    tags = parents[0].data.tags
    assert (
        tags["search.evaluator_acc_source"] == "calibrated" and tags["search.evaluator_heldout_acc"] == "None"
    )
    assert 0 <= float(tags["search.evaluator_acc"]) <= 1
    assert not Path(f"{walk.judge}.json").exists()  # nothing is written beside the user's file


def test_full_size_images_are_resized_once_and_cached(walk, capsys, monkeypatch):
    packs = sorted(p.name for p in (walk.home / "cache" / "packs").glob("*.parquet"))
    # the training size (16, the smoke budget) and the judge's (64): one pack each
    assert [p.split("-")[2] for p in packs] == ["16", "64"], packs
    [calibration] = (walk.home / "evaluators" / "calibration").glob("*.json")
    # the calibrate command finds what the search measured: no image read again, nothing measured again
    from trainers.evaluator.__main__ import main

    monkeypatch.setenv("CGAN_SEARCH_CACHE", str(walk.home / "cache"))
    args = ["calibrate", "--evaluator", str(walk.judge), "--data", str(walk.data), "--home", str(walk.home)]
    assert main(args) == 0
    assert f"read from {calibration}" in capsys.readouterr().out
    assert sorted(p.name for p in (walk.home / "cache" / "packs").glob("*.parquet")) == packs


def test_promote_generate_and_pyfunc_serve_the_champion(walk):
    import mlflow
    import pandas as pd

    assert "champion" in walk.promoted.stdout + walk.promoted.stderr
    images = sorted((walk.root / "images").glob("*.png"))
    assert len(images) == 32 and {Image.open(p).size for p in images} == {(16, 16)}
    assert (walk.root / "grid.png").is_file()
    mlflow.set_tracking_uri(walk.uri)
    model = mlflow.pyfunc.load_model("models:/clevr-cgan@champion")
    labels = pd.DataFrame({"labels": [["red cube"], ["blue sphere", "gray cylinder", "cyan cube"]]})
    a = model.predict(labels, params={"seed": 1})
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert (a == model.predict(labels, params={"seed": 1})).all()
