"""ASHA checks itself: how well each rung's score ranks the final one, and whether its cuts beat the noise.

For the trials that reached max_epochs, the Spearman rank correlation between the decision metric
(acc_val) at each epoch below max_epochs and the final one, with the count of trials; ASHA's cuts are
only as good as that ranking at its rungs. For every cut, ASHA's own decision is replayed from the
results in the order the driver received them (the MLflow timestamps of the trial runs' metrics: the
callback logs each result as the scheduler sees it): the cut-off is Ray's (`nanpercentile` of the values
recorded at that rung before, at 100 x (1 - 1/rf), ray/tune/schedulers/async_hyperband.py), and the gap
to it is set against that evaluation's own noise, the std over draws of the metric (acc_val_std). A gap
inside it is a cut a redraw of the evaluation's noise could have reversed. `check` is the arithmetic on
plain curves (tested on hand-made ones); `from_mlflow` reads the curves of a search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RHO_OK = 0.7  # a rung ranking the final score at least this well (Spearman) may cut; below, it guesses
MIN_FINISHED = 4  # fewer trials at max_epochs give no usable rank correlation (n=3: rho in steps of 0.5)


@dataclass(frozen=True)
class Point:
    """One evaluation of one trial: its epoch, the decision metric, its std over draws, and when the driver
    received it (any increasing key: only the order across trials matters)."""

    epoch: int
    value: float
    std: float
    order: float


@dataclass(frozen=True)
class Cut:
    trial_id: str
    epoch: int
    value: float
    cutoff: float
    std: float

    @property
    def gap(self) -> float:
        return self.cutoff - self.value

    @property
    def beyond_noise(self) -> bool:
        return self.gap > self.std


@dataclass(frozen=True)
class RungCheck:
    metric: str
    max_epochs: int
    rungs: tuple[int, ...]  # ASHA's milestones below max_epochs
    spearman: dict[int, tuple[float, int]]  # epoch < max_epochs -> (rho, trials at max_epochs with both)
    cuts: tuple[Cut, ...]
    mismatches: tuple[str, ...] = field(default=())  # trials whose replayed decision is not what happened

    @property
    def n_finished(self) -> int:
        return max((n for _, n in self.spearman.values()), default=0)

    @property
    def first_rung_rho(self) -> float:
        return self.spearman.get(self.rungs[0], (math.nan, 0))[0] if self.rungs else math.nan

    @property
    def suggested_grace(self) -> int | None:
        """The first epoch whose score ranks the final one with rho >= RHO_OK (None: no epoch does)."""
        good = [e for e, (rho, n) in sorted(self.spearman.items()) if n >= MIN_FINISHED and rho >= RHO_OK]
        return good[0] if good else None

    def line(self) -> str:
        """The driver's one line: how reliable the cuts were and, when rung 1 ranks poorly, the grace the
        data supports."""
        beyond = sum(c.beyond_noise for c in self.cuts)
        cuts = (
            f"{len(self.cuts)} cuts, {beyond} beyond the evaluation's noise (gap to the cut-off > "
            f"{self.metric}_std), {len(self.cuts) - beyond} within it"
        )
        if self.mismatches:
            cuts += f" ({len(self.mismatches)} trials' replayed decisions differ from what ran: {', '.join(self.mismatches[:3])})"
        if self.n_finished < MIN_FINISHED:
            return (
                f"ASHA check: {cuts}; {self.n_finished} trials ran {self.max_epochs} epochs, too few "
                f"(< {MIN_FINISHED}) to tell how well the rungs rank the final {self.metric}"
            )
        ranks = ", ".join(
            f"epoch {e} {rho:.2f}" + (" (rung)" if e in self.rungs else "")
            for e, (rho, _) in sorted(self.spearman.items())
        )
        text = f"ASHA check: {cuts}; Spearman with the final {self.metric} over {self.n_finished} trials: {ranks}"
        rho = self.first_rung_rho
        if not rho >= RHO_OK:
            grace = self.suggested_grace
            text += f"; first rung {rho:.2f} < {RHO_OK}: " + (
                f"the data supports --grace-epochs {grace}"
                if grace is not None
                else f"no epoch ranks well, early stopping is not supported (--grace-epochs {self.max_epochs})"
            )
        return text

    def metrics(self) -> dict[str, float]:
        """Scalars for the parent run (rung_spearman is logged per epoch by `log`)."""
        return {
            "asha_cuts": float(len(self.cuts)),
            "asha_cuts_beyond_noise": float(sum(c.beyond_noise for c in self.cuts)),
            "asha_replay_mismatches": float(len(self.mismatches)),
            "asha_n_finished": float(self.n_finished),
            "first_rung_spearman": self.first_rung_rho,
            "suggested_grace_epochs": float(self.suggested_grace or math.nan),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "max_epochs": self.max_epochs,
            "rungs": list(self.rungs),
            "spearman": {str(e): {"rho": rho, "n": n} for e, (rho, n) in sorted(self.spearman.items())},
            "cuts": [{**c.__dict__, "gap": c.gap, "beyond_noise": c.beyond_noise} for c in self.cuts],
            "mismatches": list(self.mismatches),
            "suggested_grace_epochs": self.suggested_grace,
            "line": self.line(),
        }


def milestones(*, max_epochs: int, grace: int, rf: int) -> tuple[int, ...]:
    """ASHA's rungs below max_epochs, ascending (Ray's _Bracket with s=0: grace x rf^k)."""
    count = int(np.log(max_epochs / grace) / np.log(rf) + 1)
    return tuple(m for m in (grace * rf**k for k in range(count)) if m < max_epochs)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson on average ranks); nan for fewer than 3 pairs or a constant side."""
    from scipy.stats import rankdata

    if len(x) < 3:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def check(
    curves: Mapping[str, Sequence[Point]],
    *,
    max_epochs: int,
    grace: int,
    rf: int,
    ended: frozenset[str] | set[str] = frozenset(),
    metric: str = "acc_val",
) -> RungCheck:
    """Rank correlations and replayed cuts (module doc) for `curves` {trial id: its evaluations}. `ended`:
    trials that stopped by themselves (diverged, failed): never one of ASHA's cuts, never a final score."""
    by_epoch = {t: {p.epoch: p for p in pts} for t, pts in curves.items()}
    last = {t: max(e) for t, e in by_epoch.items() if e}
    finished = [t for t in by_epoch if t not in ended and last.get(t, 0) >= max_epochs]
    rho = {}
    for epoch in range(1, max_epochs):
        pairs = [
            (by_epoch[t][epoch].value, by_epoch[t][max_epochs].value)
            for t in finished
            if epoch in by_epoch[t]
        ]
        if pairs:
            rho[epoch] = (spearman(*zip(*pairs, strict=True)), len(pairs))
    rungs = milestones(max_epochs=max_epochs, grace=grace, rf=rf)
    cuts, mismatches = [], []
    for rung in rungs:
        arrivals = [
            (min((p for p in pts if p.epoch >= rung), key=lambda p: p.epoch), t)
            for t, pts in curves.items()
            if any(p.epoch >= rung for p in pts)
        ]  # each trial's first result at or past the rung, taken in the order the scheduler saw them
        recorded: list[float] = []
        for point, trial in sorted(arrivals, key=lambda a: (a[0].order, a[1])):
            cutoff = float(np.nanpercentile(recorded, 100 * (1 - 1 / rf))) if recorded else None
            stop = cutoff is not None and point.value < cutoff
            stopped = last[trial] == point.epoch < max_epochs and trial not in ended
            if stop and stopped:
                cuts.append(Cut(trial, point.epoch, point.value, cutoff, point.std))
            elif stop != stopped and trial not in ended:
                mismatches.append(trial)
            recorded.append(point.value)
    return RungCheck(metric, max_epochs, rungs, rho, tuple(cuts), tuple(dict.fromkeys(mismatches)))


def from_mlflow(client, parent_run_id: str, experiment_id: str, *, metric: str) -> dict[str, list[Point]]:
    """{Ray trial id: its evaluations} from the search's trial runs: `metric` and `metric`_std per epoch
    (the step), ordered by the time the driver logged them (search/tracking.py, one batch per result)."""
    from search.tracking import PARENT_TAG, TRIAL_TAG

    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000
    )
    curves = {}
    for run in runs:
        values = client.get_metric_history(run.info.run_id, metric)
        stds = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{metric}_std")}
        curves[run.data.tags.get(TRIAL_TAG, run.info.run_id)] = [
            Point(m.step, m.value, stds.get(m.step, math.nan), m.timestamp) for m in values
        ]
    return curves


def plot(result: RungCheck, path: Path) -> Path:
    """Left: Spearman rho of each epoch's score with the final one (rungs marked). Right: each cut's gap to
    the cut-off against its noise (above the diagonal: beyond the noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = sorted(result.spearman)
    left.plot(epochs, [result.spearman[e][0] for e in epochs], "o-", color="tab:blue")
    for e in epochs:
        left.annotate(f"n={result.spearman[e][1]}", (e, result.spearman[e][0]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")  # fmt: skip
    for rung in result.rungs:
        left.axvline(rung, color="tab:gray", alpha=0.4, linestyle="--")
    left.axhline(RHO_OK, color="tab:red", alpha=0.5)
    left.set(xlabel="epoch (dashed: ASHA's rungs)", ylabel=f"Spearman rho with the final {result.metric}",
             ylim=(-1.05, 1.05), title=f"rank correlation, trials that ran {result.max_epochs} epochs")  # fmt: skip
    gaps, noise = [c.gap for c in result.cuts], [c.std for c in result.cuts]
    right.scatter(noise, gaps, c=["tab:green" if c.beyond_noise else "tab:orange" for c in result.cuts])
    top = max([*gaps, *noise, 1e-3]) * 1.1
    right.plot([0, top], [0, top], color="tab:gray", alpha=0.5)
    right.set(xlabel=f"{result.metric}_std of the evaluation", ylabel="cut-off minus score",
              title=f"{len(result.cuts)} cuts (green: beyond the noise)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log(client, parent_run_id: str, result: RungCheck, folder: Path) -> None:
    """The check on the parent run: its scalars, rung_spearman per epoch (step = epoch), the JSON, the plot."""
    import json
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in result.metrics().items() if not math.isnan(v)]
    for epoch, (rho, n) in sorted(result.spearman.items()):
        if not math.isnan(rho):
            metrics.append(Metric("rung_spearman", rho, now, epoch))
        metrics.append(Metric("rung_spearman_n", float(n), now, epoch))
    client.log_batch(parent_run_id, metrics=metrics)
    (folder / "rung_check.json").write_text(json.dumps(result.as_dict(), indent=1))
    client.log_artifact(parent_run_id, str(folder / "rung_check.json"))
    client.log_artifact(parent_run_id, str(plot(result, folder / "rung_check.png")))
