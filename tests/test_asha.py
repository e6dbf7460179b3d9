"""ASHA's rungs survive a resume (search/asha.py): Tune snapshots callbacks, not schedulers, so without
AshaState a restored trial is judged again at every rung it had passed."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("ray")

from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402

from search.asha import AshaState, ResumableASHA  # noqa: E402


def _asha() -> ResumableASHA:  # rungs at epochs 1, 2 and 4 of 8
    return ResumableASHA(
        time_attr="epoch", metric="acc_val", mode="max", max_t=8, grace_period=1, reduction_factor=2
    )


def _trial(tid: str) -> Trial:
    """Ray's own Trial; `stub` only skips looking up a registered trainable, which ASHA never reads."""
    return Trial("run_trial", trial_id=tid, stub=True)


def _report(asha: ResumableASHA, trial: Trial, epoch: int, acc: float) -> str:
    return asha.on_trial_result(None, trial, {"epoch": epoch, "acc_val": acc})


def _first_run() -> tuple[ResumableASHA, Trial]:
    """Four trials to epoch 2; the best one, `lead`, goes on to epoch 4 (it passes every rung)."""
    asha = _asha()
    trials = {t: _trial(t) for t in ("lead", "b", "c", "d")}
    for t in trials.values():
        asha.on_trial_add(None, t)
    for epoch in (1, 2):
        for tid, acc in (("lead", 0.5), ("b", 0.3), ("c", 0.2), ("d", 0.1)):
            _report(asha, trials[tid], epoch, acc + 0.01 * epoch)
    for epoch in (3, 4):
        assert _report(asha, trials["lead"], epoch, 0.55) == TrialScheduler.CONTINUE
    return asha, trials["lead"]


def _resume_and_run_on(asha: ResumableASHA, lead: Trial) -> list[str]:
    """After the restart: two new trials at epoch 1 far above `lead`'s level, then `lead` at epochs 5-7."""
    asha.on_trial_add(None, lead)
    for tid in ("e", "f"):
        new = _trial(tid)
        asha.on_trial_add(None, new)
        _report(asha, new, 1, 0.9)
    return [_report(asha, lead, epoch, 0.5) for epoch in (5, 6, 7)]


def test_a_restored_asha_does_not_judge_a_resumed_trial_again():
    asha, lead = _first_run()
    state = pickle.loads(pickle.dumps(AshaState(asha).get_state()))  # as Tune writes and reads its snapshot
    restored = _asha()
    AshaState(restored).set_state(state)
    assert restored.rung_state() == asha.rung_state()
    assert _resume_and_run_on(restored, lead) == [TrialScheduler.CONTINUE] * 3


def test_a_fresh_asha_stops_the_resumed_trial_at_a_rung_it_had_passed():
    """What Tuner.restore gives without AshaState (Ray's own behaviour, pinned so the test above bites)."""
    _, lead = _first_run()
    assert TrialScheduler.STOP in _resume_and_run_on(_asha(), lead)


def test_state_of_other_rungs_is_refused():
    asha, _ = _first_run()
    other = ResumableASHA(
        time_attr="epoch", metric="acc_val", mode="max", max_t=8, grace_period=2, reduction_factor=2
    )
    with pytest.raises(ValueError, match="not this search's scheduler"):
        AshaState(other).set_state(AshaState(asha).get_state())


def test_the_tuner_pickle_keeps_the_callback_and_the_scheduler_one_object(tmp_path):
    """Tuner.restore unpickles tuner.pkl, one pickle of the tune and run configs: AshaState must find the very
    scheduler the restored Tuner runs."""
    from ray import tune

    from search.arms import scheduler_callbacks

    asha = _asha()
    tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(scheduler=asha, num_samples=1),
        run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), callbacks=scheduler_callbacks(asha)),
    )
    state = pickle.loads((tmp_path / "x" / "tuner.pkl").read_bytes())
    scheduler = state["_tune_config"].scheduler
    (callback,) = state["_run_config"].callbacks
    assert isinstance(scheduler, ResumableASHA) and callback.scheduler is scheduler
