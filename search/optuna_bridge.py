"""Ray's OptunaSearch, corrected where it misinforms the sampler, and warm-started with named presets.

Ray 2.60 tells Optuna COMPLETE, with the last partial score, for a trial that ASHA stopped early: TPE then
treats a 2-epoch score as the final one of that recipe and drifts toward configs that look good early. Here
a trial stopped before `max_epochs` is told PRUNED, after its per-epoch accuracies were reported with
`trial.report` (TPE ranks pruned trials by how far they got and their last intermediate value). A trial that
diverged is a finished recipe that failed to converge: COMPLETE with acc 0. A trial whose worker died for
good is FAIL. `trial_state` is the one rule; the MLflow callback and the leaderboard use it too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from ray import cloudpickle
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

TIME_ATTR = "epoch"  # ASHA's time attribute and the step of every intermediate value
PRESET_ATTR = "preset"  # Optuna user attribute naming the preset an enqueued trial runs
DIVERGED_FID = math.inf  # FID of a generator that diverged: the worst possible, and finite-or-inf is legal


def trial_state(result: Mapping[str, Any] | None, *, error: bool, max_epochs: int) -> str:
    """COMPLETE, PRUNED or FAIL for a finished trial, from its last result.

    FAIL: the trial errored (retries exhausted). COMPLETE: it trained all `max_epochs`, or it diverged
    (a finished failed-to-converge result, acc 0). PRUNED: anything that stopped earlier (ASHA).
    """
    if error:
        return "FAIL"
    if not result:
        return "PRUNED"  # stopped before its first result (the search ended): nothing to learn from
    if result.get("diverged"):
        return "COMPLETE"
    return "COMPLETE" if result.get(TIME_ATTR, 0) >= max_epochs else "PRUNED"


class PresetOptunaSearch(OptunaSearch):
    """OptunaSearch with PRUNED reporting (see module doc), named presets as the first trials, and a
    pickle that also holds closures (Ray saves the searcher with plain `pickle`).

    `presets` maps a name to a full trial config. Each is enqueued (Optuna's warm start, what Ray's
    `points_to_evaluate` does) with its name as a user attribute; the define-by-run space then takes the
    preset's values for the parameters it samples, and the trial's config is the whole preset, so a
    constant of the space cannot silently replace a value of the recipe. Callers check that a preset fits
    the space (`spaces.Param.can_take`) before passing it: Optuna raises on a categorical value outside
    the choices.
    """

    def __init__(
        self,
        space: Callable[[Any], dict[str, Any] | None],
        *,
        metric: str | list[str],
        mode: str | list[str],
        sampler: optuna.samplers.BaseSampler,
        max_epochs: int,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler)
        self._max_epochs = max_epochs
        self._presets = {name: dict(config) for name, config in (presets or {}).items()}
        self._reported: dict[str, set[int]] = {}
        self.states: dict[str, str] = {}  # Ray trial id -> state told to Optuna
        for name, config in self._presets.items():
            self._ot_study.enqueue_trial(config, user_attrs={PRESET_ATTR: name})

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        preset = self._ot_trials[trial_id].user_attrs.get(PRESET_ATTR)
        if config is not None and preset is not None:
            config = {**config, **self._presets[preset]}
        return config

    def _report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """trial.report(acc, step=epoch) once per epoch: a retried trial repeats epochs it had reported."""
        if isinstance(self.metric, list) or self.metric not in result or TIME_ATTR not in result:
            return  # Optuna has no intermediate values for multi-objective studies
        step = int(result[TIME_ATTR])
        done = self._reported.setdefault(trial_id, set())
        value = result[self.metric]
        if step in done or value is None or not math.isfinite(value):
            return
        self._ot_trials[trial_id].report(float(value), step)
        done.add(step)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            # The result that made ASHA stop the trial never reaches on_trial_result: report it here.
            self._report(trial_id, result)
        state = trial_state(result, error=error, max_epochs=self._max_epochs)
        values = None
        if state == "COMPLETE":
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [self._value(m, result) for m in metrics]
            values = values if isinstance(self.metric, list) else values[0]
        try:
            self._ot_study.tell(self._ot_trials[trial_id], values, state=optuna.trial.TrialState[state])
        except (
            ValueError,
            RuntimeError,
        ) as err:  # e.g. a NaN score: record it as FAIL, never leave it RUNNING
            logger.warning("trial %s: Optuna refused %s %s (%s); telling FAIL", trial_id, state, values, err)
            state = "FAIL"
            self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.FAIL)
        self.states[trial_id] = state
        self._completed_trials.add(trial_id)

    @staticmethod
    def _value(metric: str, result: Mapping[str, Any]) -> float:
        if result.get("diverged"):
            return DIVERGED_FID if metric == "fid" else 0.0
        return float(result[metric])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__dict__.copy(), f)


def load_study_and_trials(experiment_path: str) -> tuple[optuna.Study | None, dict[str, int]]:
    """The Optuna study Tune saved with the experiment (searcher-state-*.pkl) and {Ray trial id: Optuna
    trial number}; (None, {}) if there is none. Local paths and URIs (read through pyarrow, as Tune wrote it)."""
    import pickle

    import pyarrow.fs

    if "://" in experiment_path:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), experiment_path
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    names = sorted(
        i.path for i in infos if i.base_name.startswith("searcher-state") and i.base_name.endswith(".pkl")
    )
    if not names:
        return None, {}
    with fs.open_input_file(names[-1]) as f:
        state = pickle.loads(f.read())
    if not isinstance(state, dict) or "_ot_study" not in state:
        return None, {}
    numbers = {tid: t.number for tid, t in state.get("_ot_trials", {}).items()}
    return state["_ot_study"], numbers
