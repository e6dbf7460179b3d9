"""bench/simulate.py decides as Ray Tune's schedulers do: its ASHA against Ray's own AsyncHyperBandScheduler
run for real on the same curves, and a median-stopping case small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench import simulate
from bench.curves import read_table, write_table
from bench.simulate import Asha, Curves, Median, champion, curves_from_frame, random_order, run_search


def _curves(values: np.ndarray) -> Curves:
    """(C, E) accuracies -> a one-seed table whose decision and report metrics are both these values."""
    c, e = values.shape
    table = values[:, None, :].astype(float)
    return Curves(tuple(f"c{i}" for i in range(c)), table, table, np.full((c, 1), e))


def _replay(config) -> None:
    from ray import tune

    for epoch, value in enumerate(config["curves"][config["i"]], 1):
        tune.report({"epoch": epoch, "acc": float(value)})


def _ray_asha_epochs(tmp_path, values: np.ndarray, *, grace: int, rf: int) -> list[int]:
    """Epochs each trial ran under Ray's ASHA: trials in index order, one at a time (deterministic)."""
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler

    tuner = tune.Tuner(
        _replay,
        param_space={"i": tune.grid_search(list(range(len(values)))), "curves": values.tolist()},
        tune_config=tune.TuneConfig(
            scheduler=AsyncHyperBandScheduler(
                time_attr="epoch",
                metric="acc",
                mode="max",
                max_t=values.shape[1],
                grace_period=grace,
                reduction_factor=rf,
            ),
            max_concurrent_trials=1,
            reuse_actors=True,  # one worker replays every trial: seconds, not an actor start per trial
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=f"asha-g{grace}-rf{rf}", verbose=0),
    )
    results = tuner.fit()
    epochs = {r.config["i"]: int(r.metrics["epoch"]) for r in results}
    return [epochs[i] for i in range(len(values))]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # a real Ray session and two Tune runs: ~20 s of CPU, minutes under load
@pytest.mark.parametrize(("grace", "rf"), [(1, 2), (2, 3)])
def test_asha_port_stops_the_trials_ray_stops(ray_session, tmp_path, grace, rf):
    values = np.round(np.random.default_rng(7).uniform(0.0, 1.0, size=(12, 9)), 3)
    values[:, 1:] = np.maximum.accumulate(values, axis=1)[:, 1:] * 0.5 + values[:, 1:] * 0.5  # curve-like
    ray_epochs = _ray_asha_epochs(tmp_path, values, grace=grace, rf=rf)
    curves = _curves(values)
    order = [(i, 0) for i in range(len(values))]
    out = run_search(
        curves, order, Asha(grace=grace, rf=rf, max_t=9), concurrency=1, rng=np.random.default_rng(0)
    )
    ours = [out["reached"][t][0] for t in range(len(values))]
    assert ours == ray_epochs
    assert min(ours) < 9 < max(ours) + 1  # the case cuts some trials and lets others finish
    assert out["epochs"] == sum(ray_epochs)


def test_median_stopping_by_hand():
    # three trials run alone first (fewer than 3 others: no decision), then the fourth is judged at epoch 2
    # against the running means over epochs 2..2 of the others (0.5, 0.6, 0.7: median 0.6); its best so far
    # is 0.55 < 0.6, so it stops there. The fifth's best at epoch 2 is 0.65: it continues to the end.
    values = np.array([[0.1, 0.5, 0.6], [0.2, 0.6, 0.7], [0.3, 0.7, 0.8], [0.4, 0.55, 0.9], [0.1, 0.65, 0.2]])
    curves = _curves(values)
    order = [(i, 0) for i in range(5)]
    out = run_search(curves, order, Median(grace=2), concurrency=1, rng=np.random.default_rng(0))
    assert [out["reached"][t][0] for t in range(5)] == [3, 3, 3, 2, 3]
    assert out["epochs"] == 14
    # the champion: the best final decision value among trials that ran every epoch (c2, 0.8; c3 was stopped)
    assert champion(curves, order, out["reached"]) == 2


def test_a_table_round_trip_scores_a_diverged_run_as_zero(tmp_path):
    # bench/curves.py's table -> the simulator's arrays: a run that diverged after epoch 1 ends with its acc-0
    # row at epoch 2 and scores 0 as a final accuracy (as the search scores it); the config's quality is the
    # mean over its seeds
    def rows(values, diverged=False):
        out = [{"epoch": e, "acc_val": v, "acc": v + 0.01, "diverged": 0} for e, v in enumerate(values, 1)]
        if diverged:
            out.append({"epoch": len(values) + 1, "acc_val": 0.0, "acc": 0.0, "diverged": 1})
        return out

    runs = [
        {
            "config_id": "a",
            "source": "s",
            "seed": 0,
            "config": {},
            "rows": rows([0.2, 0.3, 0.5]),
            "error": None,
        },
        {"config_id": "a", "source": "s", "seed": 1, "config": {}, "rows": rows([0.4], True), "error": None},
        {
            "config_id": "b",
            "source": "s",
            "seed": 0,
            "config": {},
            "rows": rows([0.1, 0.2, 0.3]),
            "error": None,
        },
    ]
    path = tmp_path / "t.parquet"
    write_table(runs, path, {"dataset": "hand"})
    df, meta = read_table(path)
    curves = curves_from_frame(df)
    assert meta == {"dataset": "hand"} and curves.ids == ("a", "b") and curves.max_epochs == 3
    assert (curves.decide_name, curves.report_name) == ("acc_val", "acc")
    assert curves.length.tolist() == [[3, 2], [3, 0]]
    assert np.allclose(curves.quality(), [(0.51 + 0.0) / 2, 0.31])


def test_a_search_of_fewer_trials_starts_with_the_presets_and_draws_distinct_samples():
    # --trials 4 on a table of 2 presets + 6 space samples: each search runs both presets first (the driver
    # enqueues them before Optuna samples) and then 2 distinct space samples; without --trials every config
    values = np.linspace(0.1, 0.8, 8 * 3).reshape(8, 3)
    curves = _curves(values)
    curves = Curves(
        ids=("preset:a", "preset:b", *(f"space:{i:03d}" for i in range(6))),
        decide=curves.decide,
        report=curves.report,
        length=curves.length,
    )
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        order = random_order(curves, rng, trials=4)
        configs = [c for c, _ in order]
        assert len(order) == 4 and sorted(configs[:2]) == [0, 1] and len(set(configs)) == 4
        assert all(c >= 2 for c in configs[2:])
        seen.update(configs[2:])
    assert seen == set(range(2, 8))  # every space sample gets drawn
    assert sorted(c for c, _ in random_order(curves, rng)) == list(range(8))
    assert sorted(c for c, _ in random_order(curves, rng, trials=1)) in ([0], [1])


def test_the_noise_is_the_seed_spread_of_the_best_configurations_not_of_the_collapsed_ones():
    # 20 configurations x 2 seeds x 2 epochs: 16 collapse to 0.1 on both seeds (std 0), 4 learn with seed
    # spreads 0.02, 0.04, 0.06, 0.08 (finals 0.8+-0.01, 0.7+-0.02, 0.6+-0.03, 0.5+-0.04). The best tenth, at
    # least 3: the three best, stds 0.014, 0.028, 0.042 (ddof 1): median 0.028; over all 20 it would be 0
    report = np.full((20, 2, 2), 0.1)
    for c, (mean, half) in enumerate([(0.8, 0.01), (0.7, 0.02), (0.6, 0.03), (0.5, 0.04)]):
        report[c, :, -1] = [mean - half, mean + half]
    curves = Curves(
        ids=tuple(f"c{i}" for i in range(20)), decide=report, report=report, length=np.full((20, 2), 2)
    )
    assert curves.seed_noise() == pytest.approx(np.std([0.68, 0.72], ddof=1))
    assert curves.seed_noise(top=20) == 0.0


def test_presets_none_leaves_the_preset_rows_out_of_every_search(tmp_path):
    # a table whose best configuration is a preset: with --presets none (the cpu budgets enqueue none) the
    # searches never run it, so the best final accuracy the regret is measured against is the space sample's
    def run(cid, final):
        rows = [{"epoch": e, "acc_val": final * e / 2, "acc_val_std": 0.01, "acc": final * e / 2, "diverged": 0}
                for e in (1, 2)]  # fmt: skip
        return {"config_id": cid, "source": "s", "seed": 0, "config": {}, "rows": rows, "error": None}

    path = tmp_path / "t.parquet"
    write_table(
        [run("preset:p", 0.9), run("space:000", 0.5), run("space:001", 0.3)], path, {"dataset": "hand"}
    )
    for presets, best, configs in (("first", 0.9, 3), ("none", 0.5, 2)):
        md = tmp_path / f"{presets}.md"
        assert simulate.main([str(path), "--orders", "3", "--presets", presets, "--md", str(md)]) == 0
        head = md.read_text().splitlines()[0]
        assert f"{configs} configurations" in head and f"mean final acc {best:.4f}" in head
        assert ("presets left out" in head) == (presets == "none")
