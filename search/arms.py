"""Named searcher + scheduler pairs ("arms"): the driver's default and the alternatives it is measured against.

`bench/search_value.py` runs each arm through the same driver at equal total trial-epochs (issue 15 item 5):

- `tpe-asha` (the default): seeded multivariate TPE with PRUNED reporting and presets first
  (search/optuna_bridge.py), ASHA on the decision metric.
- `stock-asha`: Ray's own `OptunaSearch` with the same sampler and ASHA. It tells Optuna COMPLETE, with the
  partial score, for a trial ASHA stopped (ray/tune/search/optuna/optuna_search.py: on_trial_complete).
- `random-asha`: Optuna's `RandomSampler` over the same define-by-run space, ASHA.
- `tpe-fifo`: the default's searcher with no early stopping: every trial runs `max_epochs`.

Every arm samples the same space through the driver's `CheckedSpace` and enqueues the same presets, so the
arms differ in the sampler, in what it is told, and in the scheduler only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ARM = "tpe-asha"


@dataclass(frozen=True)
class Arm:
    searcher: str  # a key of SEARCHERS
    scheduler: str  # a key of SCHEDULERS
    what: str  # one line for --help and the bench's tables


ARMS = {
    "tpe-asha": Arm("tpe", "asha", "TPE + ASHA, stopped trials told PRUNED (this search)"),
    "stock-asha": Arm(
        "stock-tpe", "asha", "Ray's stock OptunaSearch (TPE, stopped trials told COMPLETE) + ASHA"
    ),
    "random-asha": Arm("random", "asha", "random search (Optuna RandomSampler) + ASHA"),
    "tpe-fifo": Arm("tpe", "fifo", "TPE with no early stopping (every trial runs max_epochs)"),
}


def lookup(name: str) -> Arm:
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}: expected one of {', '.join(ARMS)}")
    return ARMS[name]


def tpe_sampler(opts):
    """The default search's sampler (seeded multivariate TPE), for the arms that keep it."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=opts.seed,
        multivariate=True,
        group=True,  # conditional parameters: model each branch's parameters jointly
        constant_liar=True,  # running trials count as bad guesses: parallel trials spread out
        n_startup_trials=min(10, max(2, opts.num_samples // 3)),
    )


def _objective(opts) -> dict[str, Any]:
    """metric/mode as the driver gives them: the decision metric (acc_val by default), plus fid if asked."""
    multi = len(opts.decision_metrics) > 1
    return {
        "metric": list(opts.decision_metrics) if multi else opts.decision_metrics[0],
        "mode": list(opts.modes) if multi else opts.modes[0],
    }


def _tpe(opts, space, presets):
    from search.driver import make_searcher

    return make_searcher(opts, space, presets)


def _stock(opts, space, presets):
    """Ray's OptunaSearch as shipped; presets go through its own warm start (points_to_evaluate)."""
    from ray.tune.search.optuna import OptunaSearch

    from search.driver import CheckedSpace

    points = [dict(config) for config in presets.values()] or None
    return OptunaSearch(
        space=CheckedSpace(space), **_objective(opts), sampler=tpe_sampler(opts), points_to_evaluate=points
    )


def _random(opts, space, presets):
    """The default's searcher (PRUNED reporting, presets first) drawing from the prior instead of TPE."""
    import optuna

    from search.driver import CheckedSpace
    from search.optuna_bridge import PresetOptunaSearch

    return PresetOptunaSearch(
        CheckedSpace(space),
        **_objective(opts),
        sampler=optuna.samplers.RandomSampler(seed=opts.seed),
        max_epochs=opts.max_epochs,
        presets=presets,
    )


SEARCHERS: dict[str, Callable[..., Any]] = {
    "tpe": _tpe,
    "stock-tpe": _stock,
    "random": _random,
}


def make_searcher(opts, space, presets: Mapping[str, Mapping[str, Any]], arm: str = DEFAULT_ARM):
    """The arm's searcher over `space` (a spaces.Space), presets enqueued first."""
    return SEARCHERS[lookup(arm).searcher](opts, space, dict(presets))


def scheduler_callbacks(scheduler) -> list:
    """The callbacks that keep `scheduler`'s state in Tune's experiment snapshots (none for a stateless one)."""
    from search.asha import AshaState, ResumableASHA

    return [AshaState(scheduler)] if isinstance(scheduler, ResumableASHA) else []


def _asha(opts):
    from search.asha import ResumableASHA
    from search.optuna_bridge import TIME_ATTR

    return ResumableASHA(
        time_attr=TIME_ATTR,
        metric=opts.decision,
        mode="max",  # an accuracy
        max_t=opts.max_epochs,
        grace_period=opts.grace_epochs,
        reduction_factor=opts.reduction_factor,
    )


def _fifo(opts):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Callable[..., Any]] = {"asha": _asha, "fifo": _fifo}


def make_scheduler(opts, arm: str = DEFAULT_ARM):
    """The arm's trial scheduler; ASHA stops trials on `opts.decision` (acc_val by default)."""
    return SCHEDULERS[lookup(arm).scheduler](opts)
