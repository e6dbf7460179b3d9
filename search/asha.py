"""Ray's ASHA with its rungs kept across a resume.

Tune saves the searcher's and the callbacks' state with every experiment snapshot, never the scheduler's
(`TrialScheduler.save` exists; Ray 2.60's TuneController never calls it), so `Tuner.restore` starts ASHA
afresh. A resumed trial then meets, one epoch after another, every rung it had already passed, each time
with its current accuracy against the cut-offs of the trials restarted beside it (the CI run of 2026-12-03:
a trial resumed at epoch 5 of 8 was stopped at epoch 7 by rung 1's cut-off, so no trial ran to the end).
`AshaState`, a callback, puts the rungs into each snapshot and back into the scheduler on a restore.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    def rung_state(self) -> dict[str, Any]:
        """Every bracket's rungs (milestone, {trial id: reward}), which bracket each live trial is in, and the
        stop count: all that ASHA decides from."""
        brackets = [[(m, dict(rec)) for m, rec in b._rungs] for b in self._brackets]
        where = {tid: self._brackets.index(b) for tid, b in self._trial_info.items()}
        return {"brackets": brackets, "trial_bracket": where, "num_stopped": self._num_stopped}

    def load_rung_state(self, state: Mapping[str, Any]) -> int:
        """Back to `state` (from `rung_state`); returns how many rung records it held."""
        mine = [[m for m, _ in b._rungs] for b in self._brackets]
        if mine != [[m for m, _ in rungs] for rungs in state["brackets"]]:
            raise ValueError(f"ASHA state of other rungs than {mine}: not this search's scheduler")
        for bracket, rungs in zip(self._brackets, state["brackets"], strict=True):
            bracket._rungs = [(m, dict(rec)) for m, rec in rungs]
        self._trial_info = {t: self._brackets[i] for t, i in state["trial_bracket"].items()}
        self._num_stopped = state["num_stopped"]
        return sum(len(rec) for rungs in state["brackets"] for _, rec in rungs)

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)


class AshaState(Callback):
    """Tune snapshots a callback's `get_state` with the experiment and hands it to `set_state` on a restore,
    after the trials are loaded and before any of them reports again."""

    def __init__(self, scheduler: ResumableASHA) -> None:
        self.scheduler = scheduler  # the same object as the Tuner's scheduler in tuner.pkl (one pickle)

    def get_state(self) -> dict[str, Any] | None:
        return {"asha": self.scheduler.rung_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        n = self.scheduler.load_rung_state(state["asha"])
        print(f"[search] ASHA resumes with its {n} rung records (the decisions made before the stop stand)")
