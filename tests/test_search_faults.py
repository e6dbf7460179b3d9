"""Faults a long search meets: a trial worker dies, the driver is killed, a recipe diverges."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_search_support import (
    children_of,
    kill_pids,
    mlflow_runs,
    run_search,
    search_command,
    search_env,
    tune_trials,
    write_space,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = (
        tmp_path_factory.getbasetemp() / "search-home"
    )  # shared with the other search modules: caches reused
    path.mkdir(exist_ok=True)
    return path


def wait_for(predicate, *, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the search ended (rc {proc.returncode}) before {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_dead_worker_is_retried_and_a_killed_driver_resumes(home, tmp_path):
    experiment, samples, epochs = "faults", 6, 8
    args = [
        "--smoke-test",
        "--num-samples",
        str(samples),
        "--max-epochs",
        str(epochs),
        "--experiment",
        experiment,
    ]
    exp_dir = home / "ray_results" / experiment
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        search_command("clevr", *args),
        env=search_env(home),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    spawned: set[int] = set()
    try:

        def running_trial_with_checkpoint():
            spawned.update(children_of(proc.pid))
            for tid, results in tune_trials(exp_dir).items():
                if (
                    results
                    and 2 <= results[-1]["epoch"] < epochs - 2
                    and results[-1]["pid"] in children_of(proc.pid)
                ):
                    return tid, results[-1]["pid"], results[-1]["epoch"]
            return None

        victim, worker, _ = wait_for(
            running_trial_with_checkpoint, timeout=150, what="a trial's 2nd epoch", proc=proc
        )
        kill_pids([worker])  # the worker dies: Tune must retry the trial from its latest checkpoint

        def retried():
            spawned.update(children_of(proc.pid))
            return any(r["pid"] != worker for r in tune_trials(exp_dir).get(victim, []))

        wait_for(retried, timeout=120, what="the retried trial's first result", proc=proc)
        wait_for(lambda: len(tune_trials(exp_dir)) >= 4, timeout=120, what="4 trials", proc=proc)
        spawned.update(children_of(proc.pid))
        proc.send_signal(signal.SIGKILL)  # the driver dies mid-search
        proc.wait(timeout=30)
    finally:
        kill_pids([proc.pid, *spawned])  # its local Ray (raylet, agents, workers): only what it spawned
        log.close()
    first = tune_trials(exp_dir)
    assert len(first) < samples, "the driver was killed too late to test resuming"

    out, _ = run_search(home, *args, cwd=tmp_path)  # the same command again
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming" in out.stdout

    trials = tune_trials(exp_dir)
    assert len(trials) == samples  # finished trials were not rerun, none was added
    client, parents, children = mlflow_runs(home, experiment)
    assert len(parents) == 1 and len(children) == samples
    assert {r.data.tags["ray.trial_id"] for r in children} == set(trials)
    assert all(
        r.info.status == "FINISHED" and r.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        for r in children
    )

    # ASHA's rungs came back with the experiment (search/asha.py), so it stopped trials at rungs only: a fresh
    # ASHA judged a resumed trial again at rungs it had passed (CI, 2026-12-03: stopped at epoch 7 of 8).
    assert re.search(r"ASHA resumes with its [1-9]\d* rung records", out.stdout), out.stdout[-3000:]
    plan = parents[0].data.params
    grace, rf = int(plan["grace_epochs"]), int(plan["reduction_factor"])
    rungs = {grace * rf**k for k in range(epochs) if grace * rf**k < epochs}
    ends = {tid: results[-1]["epoch"] for tid, results in trials.items() if not results[-1].get("diverged")}
    assert all(e == epochs or e in rungs for e in ends.values()), (ends, rungs)

    # The retried trial resumed from its checkpoint (not from epoch 1) and kept its one MLflow run.
    results = trials[victim]
    restarted = next(i for i, r in enumerate(results) if r["pid"] != worker)
    assert results[restarted]["epoch"] > 1
    run = next(r for r in children if r.data.tags["ray.trial_id"] == victim)
    assert run.data.tags.get("search.retries") == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc")]
    assert steps == sorted(set(steps)) and steps[0] == 1  # every epoch once, in order

    from search.optuna_bridge import load_study_and_trials

    study, numbers = load_study_and_trials(str(exp_dir))
    assert len(study.trials) == samples and set(numbers) == set(trials)
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}


def test_diverging_trials_finish_as_acc_zero_and_the_multi_objective_search_goes_on(home, tmp_path):
    """The digits entry (the same driver) with a space where lr_d = 1e10 makes D's loss non-finite; --promote."""
    space = write_space(
        tmp_path / "diverge.yaml",
        loss="bce",
        d_norm="none",
        g_norm="none",
        gp_lambda="10.0",
        lr_d="{choice: [2.0e-4, 1.0e+10]}",
    )
    experiment = "diverge"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a store of its own: no other module's digits-cgan@champion
    out, _ = run_search(
        home,
        *("--smoke-test", "--space", str(space), "--objectives", "acc,fid", "--num-samples", "4"),
        *("--max-epochs", "2", "--experiment", experiment, "--promote", "--tracking-uri", uri),
        entry="digits",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = mlflow_runs(home, experiment, uri)
    assert len(children) == 4
    diverged = [r for r in children if r.data.tags["search.diverged"] == "true"]
    assert diverged and len(diverged) < 4, [r.data.params["lr_d"] for r in children]
    for run in diverged:
        assert run.data.params["lr_d"] == "10000000000.0"
        assert run.data.metrics["acc"] == 0.0 and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.info.status == "FINISHED"

    from search.optuna_bridge import load_study_and_trials

    study, numbers = load_study_and_trials(str(home / "ray_results" / experiment))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for run in diverged:
        trial = study.trials[numbers[run.data.tags["ray.trial_id"]]]
        assert trial.state.name == "COMPLETE" and trial.values == [0.0, math.inf]
    assert "acc_digits" in children[0].data.metrics  # digits conditions, not i-CLEVR's
    assert Path(parents[0].data.tags["search.space"]) == space

    # --promote registered the best non-diverged trial under the digits entry's own model name.
    version = client.get_model_version_by_alias("digits-cgan", "champion")
    assert version.tags["trial_run_id"] not in {r.info.run_id for r in diverged}
    assert "promoted: models:/digits-cgan@champion" in out.stdout


def test_a_search_that_does_not_beat_the_champion_leaves_it_and_still_succeeds(home, tmp_path):
    """--promote after a search whose best is worse than @champion (same data, same judge): the alias stays,
    nothing is registered, one line says so and how to move it anyway, and the search exits 0."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("--smoke-test", "--num-samples", "1", "--max-epochs", "1", "--promote", "--tracking-uri", uri)
    first, _ = run_search(home, *args, "--experiment", "champ-1", entry="digits", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "promoted: models:/digits-cgan@champion (version 1)" in first.stdout
    client, _, _ = mlflow_runs(home, "champ-1", uri)
    # as an earlier search's champion would read had it scored every val set right: no trial here beats it
    client.set_model_version_tag("digits-cgan", "1", "metric.acc_val", "1")

    out, _ = run_search(home, *args, "--experiment", "champ-2", entry="digits", cwd=tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [t for t in out.stdout.splitlines() if "not promoted:" in t]
    assert len(lines) == 1, out.stdout[-3000:]
    line = lines[0]
    assert "kept models:/digits-cgan@champion at version 1" in line and "acc_val 1 vs " in line, line
    assert "python -m search.promote --experiment champ-2 --force" in line, line
    assert "promoted: models:" not in out.stdout.replace("not promoted:", "")
    assert [str(v.version) for v in client.search_model_versions("name='digits-cgan'")] == ["1"]
    assert str(client.get_model_version_by_alias("digits-cgan", "champion").version) == "1"
    _, parents, _ = mlflow_runs(home, "champ-2", uri)
    assert parents[0].info.status == "FINISHED"


def test_a_search_where_every_trial_diverges_exits_1_in_one_line(home, tmp_path):
    """EXIT_FAILED end to end: nothing can be chosen (every trial diverged), so the search says so in one line
    naming the experiment and where the errors are, marks its parent run FAILED, and promotes nothing."""
    # both rates absurd and late conditioning: with a projection D, or lr_g sane, a trial stayed finite (acc 0.1)
    space = write_space(tmp_path / "all-diverge.yaml", loss="bce", d_norm="none", g_norm="none",
                        gp_lambda="10.0", lr_d="1.0e+10", lr_g="1.0e+10", d_cond="late")  # fmt: skip
    experiment = "all-diverge"
    out, _ = run_search(
        home,
        *("--smoke-test", "--space", str(space), "--num-samples", "2", "--max-epochs", "2"),
        *("--experiment", experiment, "--promote"),
        entry="digits",
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"no trial of {experiment} can be chosen (2 trials:" in errors[0], out.stderr
    assert "2 diverged" in errors[0] and "Traceback" not in out.stderr
    _, parents, children = mlflow_runs(home, experiment)
    assert parents[0].info.status == "FAILED" and len(children) == 2
    assert all(r.data.tags["search.diverged"] == "true" for r in children)
    assert "promoted:" not in out.stdout
