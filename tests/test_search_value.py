"""The arms of bench/search_value.py are what they claim, on real Ray Tune and Optuna at toy sizes (a trainable
that reports a made-up accuracy per epoch, no GAN): ours tells Optuna PRUNED for a trial ASHA stopped, Ray's
stock OptunaSearch tells COMPLETE, random search samples with Optuna's RandomSampler, FIFO stops none; and the
bench's trial-epoch accounting and champion rule on hand-made results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bench import search_value
from search import arms
from tests.test_search_support import ROOT

TOY = {"num_samples": 5, "max_epochs": 3, "grace_epochs": 1, "reduction_factor": 2}


def toy_opts(seed: int = 0) -> SimpleNamespace:
    # the fields of search.options.Options the builders read: decisions on acc_val, as the driver's default
    decision = {"decision": "acc_val", "decision_metrics": ("acc_val",)}
    return SimpleNamespace(seed=seed, objectives=("acc",), modes=("max",), **decision, **TOY)


def _toy_trial(config):
    """acc rises with the epoch, at a rate set by lr_g: trials differ, so ASHA has something to cut."""
    from ray import tune

    rate = config["lr_g"] * 1000
    for epoch in range(1, TOY["max_epochs"] + 1):
        tune.report({"epoch": epoch, "acc": rate * epoch, "acc_val": rate * epoch})


def arms_through_tune(storage: str) -> None:
    """Run in a fresh process (RAY_AUTH_MODE must be set before ray is imported): every arm once, one trial
    at a time, through Tuner + ConcurrencyLimiter; prints one JSON line per arm."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_bridge import load_study_and_trials
    from spaces import load_space

    space = load_space(ROOT / "spaces" / "smoke.yaml")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for name in arms.ARMS:
            opts = toy_opts()
            searcher = arms.make_searcher(opts, space, {}, name)
            tune.Tuner(
                _toy_trial,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, 1),
                    scheduler=arms.make_scheduler(opts, name),
                    num_samples=opts.num_samples,
                ),
                run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0),
            ).fit()
            study, numbers = load_study_and_trials(f"{storage}/{name}")
            states = {t.number: t.state.name for t in study.trials}
            trials = search_value.read_trials(f"{storage}/{name}")
            epochs = {tid: len(rows) for tid, rows in trials.items()}
            told = {tid: states[numbers[tid]] for tid in trials}
            sampler = type(study.sampler).__name__
            print(json.dumps({"arm": name, "epochs": epochs, "told": told, "sampler": sampler}))
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    storage = tmp_path_factory.mktemp("arms")
    code = f"from tests.test_search_value import arms_through_tune; arms_through_tune({str(storage)!r})"
    # token auth as the driver sets it; loopback only (search/driver.py LOOPBACK_ONLY_ENV)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    # its own session: if it overruns, its Ray processes go with it (killed by their group id, not by name)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    out = SimpleNamespace(stdout=stdout)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"arm"')]
    return {line["arm"]: line for line in lines}


def _stopped(arm: dict) -> list[str]:
    return [tid for tid, n in arm["epochs"].items() if n < TOY["max_epochs"]]


@pytest.mark.slow
def test_asha_arms_stop_trials_and_fifo_stops_none(ran):
    assert set(ran) == set(arms.ARMS)
    for name in ("tpe-asha", "stock-asha", "random-asha"):
        assert len(ran[name]["epochs"]) == TOY["num_samples"] and _stopped(ran[name]), name
    assert not _stopped(ran["tpe-fifo"]) and len(ran["tpe-fifo"]["epochs"]) == TOY["num_samples"]


@pytest.mark.slow
def test_ours_tells_pruned_and_stock_tells_complete_for_a_stopped_trial(ran):
    for name in ("tpe-asha", "random-asha"):
        assert {ran[name]["told"][t] for t in _stopped(ran[name])} == {"PRUNED"}, name
    assert {ran["stock-asha"]["told"][t] for t in _stopped(ran["stock-asha"])} == {"COMPLETE"}
    for arm in ran.values():  # a trial that ran max_epochs is COMPLETE in every arm
        full = [t for t, n in arm["epochs"].items() if n == TOY["max_epochs"]]
        assert full and {arm["told"][t] for t in full} == {"COMPLETE"}


@pytest.mark.slow
def test_each_arm_samples_with_its_own_sampler(ran):
    assert ran["random-asha"]["sampler"] == "RandomSampler"
    for name in ("tpe-asha", "stock-asha", "tpe-fifo"):
        assert ran[name]["sampler"] == "TPESampler", name


def test_unknown_arm_is_refused_with_the_names():
    with pytest.raises(ValueError, match="tpe-asha"):
        arms.lookup("grid")


def _row(tid: str, epoch: int, t: float, val: float, test: float, **extra) -> dict:
    return {"trial_id": tid, "epoch": epoch, "time_total_s": t, "timestamp": t, "acc_val": val,
            "acc_test": test, "acc": test, **extra}  # fmt: skip


HAND = {
    # a: full run, best val at the end; b: stopped after 1 epoch with a high val (not eligible);
    # c: full run, lower val but higher test (the champion is chosen on val, not test)
    "a": [_row("a", 1, 1, 0.2, 0.3), _row("a", 2, 3, 0.5, 0.4)],
    "b": [_row("b", 1, 2, 0.9, 0.9)],
    "c": [_row("c", 1, 4, 0.1, 0.1), _row("c", 2, 5, 0.4, 0.6)],
}


def test_trial_epochs_count_every_reported_epoch():
    assert search_value.trial_epochs(HAND) == 5


def test_champion_is_the_best_val_among_trials_that_ran_max_epochs():
    champ = search_value.champion(HAND, max_epochs=2)
    assert champ["trial_id"] == "a" and champ["acc_test"] == 0.4


def test_best_so_far_curve_follows_completion_order_and_eligible_trials():
    curve = search_value.best_so_far(HAND, max_epochs=2)
    # (trial-epochs spent, best final acc_val so far, acc_test of that trial), one point per finished trial
    assert curve == [(3, 0.5, 0.4), (5, 0.5, 0.4)]


def _plan(**budget):
    import dataclasses

    from search.digits import DIGITS

    return search_value.Plan(
        dataset="digits", overrides={}, budget=dataclasses.replace(DIGITS.cpu, **budget), seeds=(1,),
        arms=search_value.ALL_ARMS, presets=("infogan_digits",), out=ROOT, extra=(), stamp="t",
    )  # fmt: skip


def _record(arm: str, seed: int, val: float, test: float, exit: int = 0) -> dict:
    champ = {"trial_id": f"{arm}{seed}", "acc_val": val, "acc_test": test, "final_acc_val_std": 0.01}
    return {"arm": arm, "seed": seed, "champion": champ, "trial_epochs": 10, "finals": [], "curve": [],
            "exit": exit}  # fmt: skip


def test_append_keeps_an_earlier_runs_seeds_and_goals_cover_them_all():
    earlier = search_value.report(_plan(), [_record("tpe-asha", 0, 0.5, 0.4), _record("preset", 0, 0.3, 0.2)],
                                  "2026-12-02 15:00:00 UTC", (0, 0, 0))  # fmt: skip
    saved = json.loads(json.dumps(earlier, default=str))  # as the file holds it
    records = search_value.earlier_records(saved, _plan(), ROOT / "x.json")
    assert [(r["arm"], r["seed"]) for r in records] == [("tpe-asha", 0), ("preset", 0)]
    records += [_record("tpe-asha", 1, 0.7, 0.6), _record("preset", 1, 0.2, 0.1)]
    both = search_value.report(_plan(), records, "2026-12-03 14:00:00 UTC", (0, 0, 0), saved["runs"])
    assert both["seeds"] == [0, 1] and [r["started"] for r in both["runs"]] == [
        "2026-12-02 15:00:00 UTC", "2026-12-03 14:00:00 UTC"]  # fmt: skip
    gap = both["goals"]["search_minus_preset_acc_test"]
    assert gap["per_seed"] == pytest.approx([0.2, 0.5]) and gap["mean"] == pytest.approx(0.35)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"budget": {"max_epochs": 20}}, "max_epochs=10"),
        ({"presets": ["wgan_gp_instance"]}, "presets"),
        ({"dataset": "clevr"}, "on clevr"),
    ],  # fmt: skip
)
def test_append_refuses_an_earlier_run_of_another_plan(change, named):
    ran = [_record("preset", 0, 0.3, 0.2)]  # arm (d) on record: its presets bind
    saved = json.loads(json.dumps(search_value.report(_plan(), ran, "s", (0, 0, 0)), default=str))
    for key, value in change.items():
        saved[key] = {**saved[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=named):
        search_value.earlier_records(saved, _plan(), ROOT / "x.json")


def test_append_takes_other_presets_while_no_preset_arm_is_on_record_and_goals_follow_the_records():
    # seed 0's search arms ran under a plan naming two presets, then arm (d) was run with one (--append
    # --arms preset --presets infogan_digits): the first run bound no preset, and the goals cover (a) and (d)
    # though this run's --arms lacks (a)
    import dataclasses

    two = dataclasses.replace(_plan(), presets=("infogan_digits", "wgan_gp_instance"), seeds=(0,))
    failed = _record("preset", 0, float("nan"), float("nan"), exit=1)  # an arm (d) that failed binds nothing
    saved = json.loads(json.dumps(search_value.report(two, [_record("tpe-asha", 0, 0.5, 0.4), failed], "s",
                                                      (0, 0, 0)), default=str))  # fmt: skip
    one = dataclasses.replace(_plan(), arms=("preset",), seeds=(0,))
    records = search_value.earlier_records(saved, one, ROOT / "x.json")[:1] + [_record("preset", 0, 0.3, 0.2)]
    gap = search_value.report(one, records, "t", (0, 0, 0))["goals"]["search_minus_preset_acc_test"]
    assert gap["per_seed"] == pytest.approx([0.2])
    saved = json.loads(json.dumps(search_value.report(two, records, "s", (0, 0, 0)), default=str))
    with pytest.raises(ValueError, match="arm \\(d\\) ran presets"):  # now (d) is on record: bound
        search_value.earlier_records(saved, one, ROOT / "x.json")


def test_append_to_a_missing_results_file_is_one_line(tmp_path, capsys):
    code = search_value.main(["--dataset", "digits", "--append", "--results", str(tmp_path / "none.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "none.json: no such file" in err[0]


def test_arms_d_and_e_take_the_spend_of_tpe_ashas_earlier_record(monkeypatch):
    # --append --arms preset tpe-fifo: (a) ran in an earlier run (its record says 24 trial-epochs for seed 1)
    # and sizes (d) and (e) now; without such a record the plan is refused, naming the seed
    import dataclasses

    calls = []
    monkeypatch.setattr(search_value, "run_arm", lambda plan, arm, seed, spend, log: calls.append((arm, seed, spend))
                        or {"arm": arm, "seed": seed, "trial_epochs": spend})  # fmt: skip
    plan = dataclasses.replace(_plan(), arms=("preset", "tpe-fifo"))
    with pytest.raises(ValueError, match="none for seed 1"):
        search_value.run_plan(plan, print, lambda r: None, parallel=False)
    search_value.run_plan(dataclasses.replace(plan, spent={1: 24}), print, lambda r: None, parallel=False)
    assert calls == [("preset", 1, 24), ("tpe-fifo", 1, 24)]


def test_ctrl_c_with_seeds_side_by_side_stops_every_arm_and_starts_no_next_one(monkeypatch):
    # the seeds' threads each wait on a driver process; Ctrl-C reaches the main thread only (kill -INT of the
    # bench): every live arm gets SIGINT, none is recorded, and no thread goes on to its next arm (a thread
    # whose driver died of SIGINT before its handler, exit -2, once went on to arm (d))
    import dataclasses
    import signal
    import subprocess
    import sys
    import threading

    monkeypatch.setattr(search_value, "CHILDREN", search_value.Children())
    started, recorded = [], []

    def fake_arm(plan, arm, seed, spend, log):  # a driver that only waits, as a trial-running one would
        proc = search_value.CHILDREN.start([sys.executable, "-c", "import time; time.sleep(120)"])
        started.append((arm, seed, proc))
        code = search_value.CHILDREN.wait(proc)
        if search_value.interrupted(code) or search_value.CHILDREN.stopping and code != 0:
            raise KeyboardInterrupt
        return {"arm": arm, "seed": seed, "trial_epochs": 10}

    monkeypatch.setattr(search_value, "run_arm", fake_arm)
    plan = dataclasses.replace(_plan(), seeds=(0, 1), arms=search_value.SEARCH_ARMS)
    main = threading.main_thread().ident  # a real SIGINT at the main thread (interrupt_main does not wake
    timer = threading.Timer(3.0, signal.pthread_kill, (main, signal.SIGINT))  # its wait), once both run
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        search_value.run_plan(plan, print, recorded.append, parallel=True)
    timer.cancel()
    assert sorted((a, s) for a, s, _ in started) == [("tpe-asha", 0), ("tpe-asha", 1)]
    assert all(proc.returncode == -2 for *_, proc in started)  # each got SIGINT
    assert recorded == []
    with pytest.raises(KeyboardInterrupt):  # and nothing starts after
        search_value.CHILDREN.start([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL)


@pytest.mark.parametrize(("code", "stop"), [(130, True), (-2, True), (0, False), (1, False)])
def test_an_arms_exit_code_says_whether_it_was_interrupted(code, stop):
    assert search_value.interrupted(code) is stop


def test_resource_flags_reach_every_arms_driver():
    """--cpus-per-trial and --max-concurrent go to the driver of every arm, as the driver's own flags."""
    parser = search_value.build_parser()
    args = parser.parse_args(["--dataset", "digits", "--cpus-per-trial", "2", "--max-concurrent", "1"])
    plan = search_value.make_plan(args, parser)
    for arm in search_value.ALL_ARMS:
        argv = search_value.driver_call(plan, arm, seed=0, spend=20)[1]
        assert argv[argv.index("--cpus-per-trial") + 1] == "2", arm
        assert argv[argv.index("--max-concurrent") + 1] == "1", arm
    from search.digits import DIGITS
    from search.options import build_parser as driver_parser  # they are the driver's flags, spelled so

    known = {s for a in driver_parser(DIGITS, "search/digits.py")._actions for s in a.option_strings}
    assert {"--cpus-per-trial", "--max-concurrent"} <= known


def test_arms_that_crown_the_same_trial_all_show_in_the_plot(tmp_path):
    # On i-CLEVR's cpu budget every arm crowned the same startup trial, and the plot drew their equal lines
    # over each other: only the last arm's colour was left. Nested widths keep each one visible.
    import matplotlib.colors
    import matplotlib.image
    import numpy as np

    curve = [(3, 0.2, 0.18), (6, 0.25, 0.22), (9, 0.25, 0.22)]
    records = [
        {**_record(arm, 0, 0.25, 0.22), "curve": curve} for arm in ("tpe-asha", "stock-asha", "tpe-fifo")
    ]
    path = search_value.plot(records, tmp_path / "p.png", title="equal curves " * 30)
    image = matplotlib.image.imread(path)[..., :3]
    for arm in ("tpe-asha", "stock-asha", "tpe-fifo"):
        rgb = np.array(matplotlib.colors.to_rgb(search_value.COLORS[arm]))
        # the legend's handle alone is ~100 pixels of the colour; a visible line in both panels is far more
        assert (np.abs(image - rgb).max(axis=-1) < 0.2).sum() > 1000, arm  # 0.2: thin lines are anti-aliased
