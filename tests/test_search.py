"""Search plumbing without a Ray cluster: command line, the Optuna bridge, presets, leaderboard helpers."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.clevr import CLEVR
from search.digits import DIGITS
from search.driver import fitting_presets
from search.options import complete, parse
from search.optuna_bridge import PRESET_ATTR, PresetOptunaSearch, trial_state
from search.tracking import metrics_of
from spaces import load_space
from trainers.config import TrainConfig, load_preset

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
CLEVR_PRESETS = ("wgan_gp_instance", "sagan_wgan_gp", "dcgan_nonsat", "wgan_clip", "acgan_wgan_gp")


def run_entry(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "search" / "clevr.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


# --- command line ---------------------------------------------------------------------------------------


def test_help_explains_every_option():
    out = run_entry("--help")
    assert out.returncode == 0
    for option in (
        "--space", "--data", "--evaluator", "--num-samples", "--max-epochs", "--grace-epochs",
        "--reduction-factor", "--gpus-per-trial", "--cpus-per-trial", "--max-concurrent", "--storage",
        "--tracking-uri", "--experiment", "--seed", "--promote", "--smoke-test", "--objectives",
        "--max-failures", "--presets",
    ):  # fmt: skip
        assert option in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--num-samples", "0"],
        ["--objectives", "fid"],
        ["--objectives", "acc,loss"],
        ["--storage", "relative/path"],
        ["--tracking-uri", "sqlite:///relative.db"],
        ["--space", "no_such_space.yaml"],
        ["--gpus-per-trial", "0.3"],
        ["--experiment", "a/b"],
        ["--max-failures", "-1"],
        ["--data", "/no/such/folder"],
        ["--evaluator", "/no/such/evaluator.pt"],
        ["--grace-epochs", "5", "--max-epochs", "2"],
        ["--no-such-option"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args):
    out = run_entry(*args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr and "error:" in out.stderr


def test_defaults_are_absolute_and_persistent(tmp_path, monkeypatch):
    monkeypatch.setenv("CGAN_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args, parser = parse(CLEVR, [])
    opts = complete(args, parser, CLEVR, cluster_gpus=0)
    assert opts.budget_name == "cpu" and opts.gpus_per_trial == 0
    assert opts.home == (tmp_path / "home").resolve()
    assert opts.storage == str(opts.home / "ray_results")
    assert opts.tracking_uri == f"sqlite:///{opts.home / 'mlflow.db'}"
    assert opts.space.is_absolute() and opts.space.is_file()
    gpu = complete(args, parser, CLEVR, cluster_gpus=1)
    assert gpu.budget_name == "gpu" and gpu.gpus_per_trial == 0.25 and gpu.space.name == "clevr.yaml"
    assert gpu.presets == CLEVR_PRESETS


def test_budgeted_flags_are_exactly_the_budget_fields_a_user_may_set():
    """One table drives the flags, their help and the fill: each budgeted row names a Budget field, and
    every Budget field but the entry-only ones has a row (a new field without a flag, or the reverse, fails)."""
    import dataclasses

    from search.budget import Budget
    from search.options import BUDGETED, OPTIONS, Options

    entry_only = {"scenes", "evaluator_fit"}  # set by the entry script alone
    assert {f.name for f in BUDGETED} == {f.name for f in dataclasses.fields(Budget)} - entry_only
    assert {f.name for f in OPTIONS} <= {f.name for f in dataclasses.fields(Options)}
    help_text = parse(DIGITS, [])[1].format_help()
    assert "trials in total (budget cpu/gpu/smoke: 12 / 48 / 6)" in " ".join(help_text.split())


@pytest.mark.parametrize("entry", [CLEVR, DIGITS], ids=["clevr", "digits"])
@pytest.mark.parametrize(
    "argv", [[], ["--smoke-test"], ["--max-epochs", "1"], ["--size", "16", "--presets", "none"]]
)
@pytest.mark.parametrize("gpus", [0, 1])
def test_options_completed_before_ray_then_for_the_cluster_equal_one_complete(
    entry, argv, gpus, tmp_path, monkeypatch
):
    """The driver completes the options once before Ray and then only swaps in the cluster's budget."""
    from search.options import for_cluster

    monkeypatch.setenv("CGAN_SEARCH_HOME", str(tmp_path))
    args, parser = parse(entry, [*argv, "--experiment", "x"])
    before_ray = complete(args, parser, entry)
    assert for_cluster(before_ray, args, parser, gpus) == complete(args, parser, entry, cluster_gpus=gpus)


def test_no_function_in_search_reaches_60_lines():
    """search/ stays readable: the longest function (docstring included) is under 60 lines."""
    import ast

    lengths = {
        f"{path.name}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for path in sorted((ROOT / "search").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    longest = max(lengths, key=lengths.get)
    assert lengths[longest] < 60, f"{longest}: {lengths[longest]} lines"


def test_entries_differ_only_in_defaults():
    clevr = (ROOT / "search" / "clevr.py").read_text()
    digits = (ROOT / "search" / "digits.py").read_text()
    for text in (clevr, digits):
        assert "from search.driver import main" in text
        assert "def " not in text and "class " not in text  # data only, no logic of their own
    assert CLEVR.model_name == "clevr-cgan" and DIGITS.model_name == "digits-cgan"


# --- Optuna bridge --------------------------------------------------------------------------------------


def tiny_space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("c", ["a", "b"])
    return {"k": 5}


def make_searcher(**kw) -> PresetOptunaSearch:
    defaults = {"metric": "acc", "mode": "max", "max_epochs": 3}
    return PresetOptunaSearch(
        tiny_space, sampler=optuna.samplers.TPESampler(seed=0, multivariate=True), **{**defaults, **kw}
    )


@pytest.mark.parametrize(
    ("result", "error", "state"),
    [
        ({"epoch": 3, "acc": 0.5}, False, "COMPLETE"),
        ({"epoch": 1, "acc": 0.5}, False, "PRUNED"),
        ({"epoch": 1, "acc": 0.0, "diverged": 1}, False, "COMPLETE"),
        ({"epoch": 2, "acc": 0.5}, True, "FAIL"),
        (None, False, "PRUNED"),
    ],
)
def test_trial_state_rule(result, error, state):
    assert trial_state(result, error=error, max_epochs=3) == state


def test_asha_stopped_trial_is_pruned_with_its_intermediate_values():
    s = make_searcher()
    s.suggest("stopped")
    s.suggest("full")
    s.on_trial_result("stopped", {"acc": 0.1, "epoch": 1})
    # ASHA's deciding result reaches only on_trial_complete (Ray skips on_trial_result for a STOP).
    s.on_trial_complete("stopped", {"acc": 0.2, "epoch": 2})
    for epoch in (1, 2, 3):
        s.on_trial_result("full", {"acc": 0.1 * epoch, "epoch": epoch})
    s.on_trial_complete("full", {"acc": 0.3, "epoch": 3})
    stopped, full = s.study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.1, 2: 0.2}
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == pytest.approx(0.3)
    assert s.states == {"stopped": "PRUNED", "full": "COMPLETE"}


def test_retried_epochs_are_reported_once_and_errors_are_fail():
    s = make_searcher()
    s.suggest("t")
    for epoch in (1, 2, 1, 2, 3):  # a retry from the epoch-0 checkpoint repeats epochs 1-2
        s.on_trial_result("t", {"acc": 0.1, "epoch": epoch})
    s.suggest("bad")
    s.on_trial_complete("bad", {"acc": 0.1, "epoch": 1}, error=True)
    s.on_trial_complete("t", {"acc": 0.1, "epoch": 3})
    t, bad = s.study.trials
    assert sorted(t.intermediate_values) == [1, 2, 3]
    assert bad.state == optuna.trial.TrialState.FAIL


def test_diverged_trial_is_complete_with_acc_zero_single_and_multi_objective():
    single = make_searcher()
    single.suggest("d")
    single.on_trial_complete("d", {"acc": 0.0, "epoch": 1, "diverged": 1, "fid": math.inf})
    assert single.study.trials[0].value == 0.0
    multi = make_searcher(metric=["acc", "fid"], mode=["max", "min"])
    multi.suggest("d")
    multi.on_trial_complete("d", {"acc": 0.0, "epoch": 1, "diverged": 1, "fid": math.inf})
    assert multi.study.trials[0].values == [0.0, math.inf]
    multi.suggest("p")
    multi.on_trial_complete("p", {"acc": 0.3, "epoch": 1, "fid": 2.0})
    assert multi.study.trials[1].state == optuna.trial.TrialState.PRUNED


def test_searcher_pickles_with_closures_and_restores(tmp_path):
    s = PresetOptunaSearch(
        lambda trial: {"x": trial.suggest_float("x", 0, 1)},  # a closure: plain pickle would refuse it
        metric="acc",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0),
        max_epochs=2,
    )
    s.suggest("a")
    s.on_trial_complete("a", {"acc": 0.5, "epoch": 2})
    s.save(str(tmp_path / "s.pkl"))
    restored = make_searcher()
    restored.restore(str(tmp_path / "s.pkl"))
    assert [t.value for t in restored.study.trials] == [0.5]
    assert pickle.loads((tmp_path / "s.pkl").read_bytes())["_max_epochs"] == 2


# --- presets (warm start) -------------------------------------------------------------------------------


def test_every_clevr_preset_fits_the_wide_space_and_runs_as_written():
    space = load_space(SPACES / "clevr.yaml")
    presets, notes = fitting_presets(space, CLEVR_PRESETS)
    assert list(presets) == list(CLEVR_PRESETS), notes
    s = PresetOptunaSearch(
        space.define_by_run,
        metric="acc",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True),
        max_epochs=3,
        presets=presets,
    )
    configs = [s.suggest(f"t{i}") for i in range(len(CLEVR_PRESETS) + 1)]
    for name, config in zip(CLEVR_PRESETS, configs, strict=False):
        assert TrainConfig.from_dict(config) == load_preset(name), name
    assert [t.user_attrs.get(PRESET_ATTR) for t in s.study.trials] == [*CLEVR_PRESETS, None]
    TrainConfig.from_dict(configs[-1])  # the first sampled trial after the presets is valid too


def test_a_preset_the_space_cannot_express_is_skipped_with_a_note():
    presets, notes = fitting_presets(load_space(SPACES / "clevr_narrow.yaml"), ("wgan_clip",))
    assert presets == {}
    assert len(notes) == 1 and "wgan_clip" in notes[0] and "loss: value 'wgan'" in notes[0]


# --- MLflow helpers -------------------------------------------------------------------------------------


def test_only_trial_numbers_become_metrics():
    result = {
        "acc": 0.5, "acc_test": 0.4, "fid": 3.0, "epoch": 2, "diverged": 0, "config": {"lr_g": 1e-4},
        "trial_id": "x", "done": False, "training_iteration": 2, "time_this_iter_s": 1.0, "pid": 3,
        "timestamp": 1, "time_total_s": 4.0, "hostname": "h", "node_ip": "1",
    }  # fmt: skip
    assert set(metrics_of(result)) == {"acc", "acc_test", "fid", "epoch", "diverged", "time_total_s"}


def _record_config(config):
    from ray import tune

    tune.report({"acc": 0.5, "epoch": 1})


def presets_through_tune(storage: str) -> None:
    """Run in a fresh process (RAY_AUTH_MODE must be set before ray is imported)."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    space = load_space(SPACES / "clevr.yaml")
    presets, _ = fitting_presets(space, CLEVR_PRESETS)
    searcher = PresetOptunaSearch(
        space.define_by_run,
        metric="acc",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True),
        max_epochs=1,
        presets=presets,
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            _record_config,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, 2), num_samples=len(presets) + 1
            ),
            run_config=tune.RunConfig(storage_path=storage, name="presets", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    configs = [TrainConfig.from_dict(r.config) for r in results]
    for name in CLEVR_PRESETS:
        assert load_preset(name) in configs, name
    assert len(results) == len(presets) + 1 and not results.errors
    print("presets ok")


@pytest.mark.slow
def test_ray_tune_really_runs_the_presets_with_a_define_by_run_space(tmp_path):
    """Through Tuner, SearchGenerator and ConcurrencyLimiter, not just the searcher: every preset is a trial
    whose config is the whole preset."""
    code = f"from tests.test_search import presets_through_tune; presets_through_tune({str(tmp_path)!r})"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180
    )
    assert out.returncode == 0 and "presets ok" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.parametrize(
    ("now", "named"),
    [
        ({"num_samples": 2, "max_epochs": 2, "presets": "none"}, None),
        ({"num_samples": 3, "max_epochs": 2}, "--num-samples 2, this command 3"),
        ({"num_samples": 2, "presets": "sagan_wgan_gp"}, "--presets none, this command sagan_wgan_gp"),
        ({"num_samples": 2, "max_concurrent": 8, "max_failures": 5}, None),  # resources may change
        ({"num_samples": 2, "select": "test"}, None),  # a key the old run lacks is not held against it
    ],
)
def test_a_resume_that_would_change_the_plan_names_the_flag(now, named):
    from search.driver import changed_plan

    saved = {
        "num_samples": "2",
        "max_epochs": "2",
        "presets": "none",
        "max_concurrent": "2",
        "max_failures": "2",
    }
    assert changed_plan(saved, now) == named
