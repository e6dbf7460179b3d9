"""Replay a curve table (bench/curves.py) under early-stopping schedulers, offline, over many random orders.

    python bench/simulate.py bench/results/curves-digits-32.parquet [--orders 2000] [--concurrency 2] \
        [--md bench/results/simulate-digits-32.md] [--plot docs/simulate-digits-32.png]

Each simulated search runs every configuration of the table once, in a random order, with a random one of
its seeds, `--concurrency` trials at a time, each epoch one time unit. Schedulers see the decision metric
(acc_val, else acc) after every epoch and may stop a trial, exactly as Ray Tune's schedulers decide:
`Asha` is a line-for-line port of Ray 2.60's AsyncHyperBandScheduler (and so, with brackets > 1, of its
asynchronous Hyperband), `Median` of its MedianStoppingRule (hard stop; where Ray would pause a trial for
lack of samples this one continues). The search ends with the trial that ran the full epochs with the best
final decision metric (the driver's promotion rule); its regret is the best configuration's final reported
accuracy (acc_test, mean over seeds) minus the chosen configuration's. tests/test_simulate.py checks the
port against Ray's own scheduler on the same curves.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainers.cli import OneLineParser, positive_int, run_command


@dataclass(frozen=True)
class Curves:
    """A curve table as arrays: C configurations, up to S seeds, E epochs. nan where a run has no epoch."""

    ids: tuple[str, ...]
    decide: np.ndarray  # (C, S, E) what the scheduler sees
    report: np.ndarray  # (C, S, E) what the search reports (regret is measured on it)
    length: np.ndarray  # (C, S) epochs each run reported (0: no run for this seed)
    decide_name: str = "acc_val"
    report_name: str = "acc_test"

    @property
    def max_epochs(self) -> int:
        return self.decide.shape[2]

    def quality(self) -> np.ndarray:
        """(C,) final reported accuracy, mean over the seeds that ran; a run that ended early (diverged)
        counts as 0, as the search scores it."""
        final = np.where(self.length == self.max_epochs, self.report[:, :, -1], 0.0)
        final = np.where(self.length > 0, final, np.nan)
        return np.nanmean(final, axis=1)

    def seed_noise(self, top: int | None = None) -> float:
        """Median std over seeds of the final reported accuracy, over the `top` best configurations that ran
        two seeds or more (default: a tenth of the table, at least 3). The best ones: a champion is chosen
        among them, and a table where most recipes collapse to one class (digits at 0.100 on every seed)
        would otherwise report a noise of 0."""
        final = np.where(self.length == self.max_epochs, self.report[:, :, -1], np.nan)
        quality = self.quality()
        k = top or max(3, math.ceil(len(self.ids) / 10))
        seeded = [
            c for c in np.argsort(-np.nan_to_num(quality, nan=-np.inf)) if (~np.isnan(final[c])).sum() >= 2
        ]
        stds = [np.std(final[c][~np.isnan(final[c])], ddof=1) for c in seeded[:k]]
        return float(np.median(stds)) if stds else float("nan")


def curves_from_frame(
    df, *, decide: str | None = None, report: str | None = None, max_epochs: int | None = None
) -> Curves:
    """Curves from a curves@1 table (pandas). decide: acc_val if the table has it, else acc; report:
    acc_test if present, else acc; max_epochs cuts every curve there (a shorter search's budget)."""

    def present(name: str) -> bool:
        return name in df.columns and df[name].notna().any()

    decide = decide or ("acc_val" if present("acc_val") else "acc")
    report = report or ("acc_test" if present("acc_test") else "acc")
    for name in (decide, report):
        if name not in df.columns:
            raise ValueError(f"the table has no column {name!r} (columns: {', '.join(df.columns)})")
    df = df[df["epoch"] > 0]
    ids = tuple(sorted(df["config_id"].unique()))
    seeds = sorted(df["seed"].unique())
    E = int(df.loc[df["diverged"].fillna(0) == 0, "epoch"].max())
    if max_epochs is not None:
        if max_epochs > E:
            raise ValueError(f"--max-epochs {max_epochs}: the table's runs have {E} epochs")
        E = max_epochs
    C, S = len(ids), len(seeds)
    d = np.full((C, S, E), np.nan)
    r = np.full((C, S, E), np.nan)
    length = np.zeros((C, S), dtype=int)
    ci, si = {c: i for i, c in enumerate(ids)}, {s: i for i, s in enumerate(seeds)}
    for row in df.itertuples(index=False):
        c, s, e = ci[row.config_id], si[row.seed], int(row.epoch)
        if e > E:
            continue
        d[c, s, e - 1] = getattr(row, decide)
        r[c, s, e - 1] = getattr(row, report)
        length[c, s] = max(length[c, s], e)
    return Curves(ids, d, r, length, decide, report)


# --- Schedulers: Ray 2.60's decisions, on plain trial ids ------------------------------------------------


class Fifo:
    name = "full budget"

    def add(self, trial: int, rng: np.random.Generator) -> None: ...

    def decides(self, epoch: int) -> bool:
        return False

    def result(self, trial: int, epoch: int, value: float) -> bool:
        return False  # never stop: every trial runs to max_epochs

    def complete(self, trial: int, epoch: int, value: float) -> None: ...


@dataclass
class _Bracket:
    """ray.tune.schedulers.async_hyperband._Bracket."""

    min_t: int
    max_t: int
    rf: float
    s: int
    rungs: list = field(init=False)

    def __post_init__(self) -> None:
        n = int(np.log(self.max_t / self.min_t) / np.log(self.rf) - self.s + 1)
        self.rungs = [(self.min_t * self.rf ** (k + self.s), {}) for k in reversed(range(n))]

    def cutoff(self, recorded: dict) -> float | None:
        if not recorded:
            return None
        return np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100)

    def on_result(self, trial: int, cur_iter: int, cur_rew: float) -> bool:
        stop = False
        for milestone, recorded in self.rungs:
            if cur_iter < milestone or trial in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and cur_rew < cutoff:
                stop = True
            recorded[trial] = cur_rew
            break
        return stop


class Asha:
    """ray.tune.schedulers.AsyncHyperBandScheduler(mode='max', stop_last_trials=True); brackets > 1 is Ray's
    asynchronous Hyperband (each trial joins a bracket drawn with Ray's probabilities)."""

    def __init__(self, *, grace: int, rf: float, max_t: int, brackets: int = 1):
        self.grace, self.rf, self.max_t, self.n_brackets = grace, rf, max_t, brackets
        self.brackets = [_Bracket(grace, max_t, rf, s) for s in range(brackets)]
        self.info: dict[int, _Bracket] = {}
        self.milestones = {int(m) for b in self.brackets for m, _ in b.rungs} | {max_t}
        kind = "ASHA" if brackets == 1 else f"async Hyperband ({brackets} brackets)"
        self.name = f"{kind} grace {grace}, rf {rf:g}"

    def add(self, trial: int, rng: np.random.Generator) -> None:
        sizes = np.array([len(b.rungs) for b in self.brackets])
        probs = np.e ** (sizes - sizes.max())
        idx = rng.choice(len(self.brackets), p=probs / probs.sum()) if len(self.brackets) > 1 else 0
        self.info[trial] = self.brackets[idx]

    def decides(self, epoch: int) -> bool:
        return epoch in self.milestones

    def result(self, trial: int, epoch: int, value: float) -> bool:
        if epoch >= self.max_t:
            return True
        return self.info[trial].on_result(trial, epoch, value)

    def complete(self, trial: int, epoch: int, value: float) -> None:
        self.info.pop(trial).on_result(trial, epoch, value)


class Median:
    """ray.tune.schedulers.MedianStoppingRule(mode='max', hard_stop=True, min_time_slice=0) on epochs; with
    too few other trials it continues (Ray may pause instead, which only reorders the work).

    Ray compares a trial's best result so far with the median, over the other trials that reported epoch t,
    of their mean result over epochs grace..t. Trials here report every epoch, so that mean is fixed once a
    trial reports t: kept in one sorted list per epoch instead of recomputed from every result."""

    def __init__(self, *, grace: int, min_samples: int = 3):
        self.grace, self.min_samples = grace, min_samples
        self.sums: dict[int, float] = {}  # trial -> sum of its results over epochs grace..latest
        self.best: dict[int, float] = {}
        self.means: dict[
            int, list[float]
        ] = {}  # epoch t -> sorted running means of the trials that reached t
        self.name = f"median stopping grace {grace}"

    def add(self, trial: int, rng: np.random.Generator) -> None:
        self.sums[trial], self.best[trial] = 0.0, -math.inf

    def decides(self, epoch: int) -> bool:
        return True  # every result enters the running means

    def _record(self, trial: int, epoch: int, value: float) -> None:
        self.best[trial] = max(self.best[trial], value)
        if epoch >= self.grace:
            self.sums[trial] += value
            mean = self.sums[trial] / (epoch - self.grace + 1)
            if np.isfinite(mean):
                bisect.insort(self.means.setdefault(epoch, []), mean)

    def result(self, trial: int, epoch: int, value: float) -> bool:
        others = self.means.get(epoch, [])
        n = len(others)  # before this trial's own mean at epoch goes in
        median = (others[n // 2] if n % 2 else 0.5 * (others[n // 2 - 1] + others[n // 2])) if n else 0.0
        self._record(trial, epoch, value)
        if epoch < self.grace or n < self.min_samples:
            return False
        return self.best[trial] < median

    def complete(self, trial: int, epoch: int, value: float) -> None:
        # Ray appends the final result once more on completion, so it counts twice in this trial's mean
        if epoch < self.grace:
            return
        k = epoch - self.grace + 1
        old, new = self.sums[trial] / k, (self.sums[trial] + value) / (k + 1)
        means = self.means[epoch]
        if np.isfinite(old):
            del means[bisect.bisect_left(means, old)]
        if np.isfinite(new):
            bisect.insort(means, new)


def run_search(
    curves: Curves, order: list[tuple[int, int]], scheduler, *, concurrency: int, rng: np.random.Generator
) -> dict:
    """One search: trials = (config, seed) in `order`, `concurrency` at a time, one epoch per time unit;
    results due at the same time reach the scheduler in the trials' start order. Only the epochs where the
    scheduler can decide (`scheduler.decides(epoch)`) and each run's last are replayed: between them a
    scheduler of Ray's neither records nor stops anything. Returns {epochs (trial-epochs spent),
    reached: {trial: (epochs, last decision value)}}."""
    import heapq

    pending = list(enumerate(order))[::-1]
    events: list[tuple[int, int, int]] = []  # (time, trial, epoch): trial numbers are the start order
    reached: dict[int, tuple[int, float]] = {}
    start: dict[int, int] = {}
    spent = 0

    def next_epoch(c: int, s: int, e: int) -> int:
        last = int(curves.length[c, s])
        return next((x for x in range(e + 1, last) if scheduler.decides(x)), last)

    def launch(now: int) -> None:
        t, (c, s) = pending.pop()
        scheduler.add(t, rng)
        start[t] = now
        heapq.heappush(events, (now + next_epoch(c, s, 0), t, next_epoch(c, s, 0)))

    for _ in range(min(concurrency, len(pending))):
        launch(0)
    while events:
        now, t, e = heapq.heappop(events)
        c, s = order[t]
        value = float(curves.decide[c, s, e - 1])
        stop = scheduler.result(t, e, value)
        if stop or e >= curves.length[c, s]:
            scheduler.complete(t, e, value)
            reached[t] = (e, value)
            spent += e
            if pending:
                launch(now)
        else:
            n = next_epoch(c, s, e)
            heapq.heappush(events, (start[t] + n, t, n))
    return {"epochs": spent, "reached": reached}


def champion(curves: Curves, order: list[tuple[int, int]], reached: dict) -> int | None:
    """The config the search ends with: best final decision value among trials that ran max_epochs."""
    full = [(v, t) for t, (e, v) in reached.items() if e >= curves.max_epochs and np.isfinite(v)]
    if not full:
        return None
    _, t = max(full, key=lambda x: (x[0], -x[1]))
    return order[t][0]


def random_order(
    curves: Curves, rng: np.random.Generator, trials: int | None = None
) -> list[tuple[int, int]]:
    """[(config, seed)] of one search: every configuration in a random order, or with `trials` a search of
    that many: the table's presets first (the driver enqueues them before sampling), then space samples
    drawn without replacement (Optuna's random sampler over the table's own samples)."""
    if trials is None or trials >= len(curves.ids):
        configs = rng.permutation(len(curves.ids))
    else:
        presets = [i for i, name in enumerate(curves.ids) if name.startswith("preset:")]
        rest = [i for i, name in enumerate(curves.ids) if not name.startswith("preset:")]
        head = list(rng.permutation(presets))[:trials]
        configs = head + list(rng.choice(rest, size=max(0, trials - len(head)), replace=False))
    order = []
    for c in configs:
        seeds = np.flatnonzero(curves.length[c] > 0)
        order.append((int(c), int(rng.choice(seeds))))
    return order


def schedulers(max_epochs: int, graces: list[int], rfs: list[float]) -> list:
    """Factories for every setting the table can take (a grace below max_epochs)."""
    out = [lambda: Fifo()]
    for g in graces:
        if g >= max_epochs:
            continue
        for rf in rfs:
            out.append(lambda g=g, rf=rf: Asha(grace=g, rf=rf, max_t=max_epochs))
        out.append(lambda g=g: Asha(grace=g, rf=3, max_t=max_epochs, brackets=3))
        out.append(lambda g=g: Median(grace=g))
    return out


def evaluate(
    curves: Curves, factories, *, orders: int, concurrency: int, seed: int, trials: int | None = None
) -> list[dict]:
    quality = curves.quality()
    best = float(np.nanmax(quality))
    full_cost = int(curves.length.max(axis=1).sum())  # noqa: F841 - documented in the row as the full budget
    rows = []
    for make in factories:
        rng = np.random.default_rng(seed)  # the same orders for every scheduler
        costs, regrets, missing = [], [], 0
        for _ in range(orders):
            order = random_order(curves, rng, trials)
            sched = make()
            out = run_search(curves, order, sched, concurrency=concurrency, rng=rng)
            chosen = champion(curves, order, out["reached"])
            costs.append(out["epochs"])
            if chosen is None:
                missing += 1
                regrets.append(best)
            else:
                regrets.append(best - float(quality[chosen]))
        costs, regrets = np.array(costs, float), np.array(regrets)
        rows.append(
            {
                "scheduler": sched.name,
                "epochs_mean": costs.mean(),
                "epochs_std": costs.std(),
                "regret_mean": regrets.mean(),
                "regret_std": regrets.std(),
                "regret_p50": float(np.median(regrets)),
                "regret_p90": float(np.quantile(regrets, 0.9)),
                "no_champion": missing,
                "orders": orders,
            }
        )
    full = rows[0]["epochs_mean"]
    for r in rows:
        r["epochs_frac"] = r["epochs_mean"] / full
    return rows


def rank_correlation(curves: Curves) -> list[tuple[int, float, int]]:
    """[(epoch, Spearman of the epoch's decision metric with the final one, runs)] over the runs that
    reached max_epochs."""
    import warnings

    from scipy.stats import spearmanr

    ok = curves.length == curves.max_epochs
    final = curves.decide[:, :, -1][ok]
    out = []
    for e in range(1, curves.max_epochs):
        with warnings.catch_warnings():  # runs all tied (e.g. at chance): nan, said as such in the table
            warnings.simplefilter("ignore")
            rho = spearmanr(curves.decide[:, :, e - 1][ok], final).statistic
        out.append((e, float(rho), int(ok.sum())))
    return out


def choose(rows: list[dict], noise: float) -> dict | None:
    """The cheapest ASHA setting whose mean regret is within the noise of the full budget's."""
    full = rows[0]["regret_mean"]
    ok = [r for r in rows if r["scheduler"].startswith("ASHA") and r["regret_mean"] <= full + noise]
    return min(ok, key=lambda r: (r["epochs_mean"], r["regret_mean"])) if ok else None


def markdown(
    rows: list[dict],
    *,
    curves: Curves,
    meta: dict,
    noise: float,
    concurrency: int,
    corr: list,
    chosen: dict | None,
    noise_source: str = "",
    trials: int | None = None,
    presets: str = "first",
) -> str:
    per_search = (
        f"searches of {trials} trials ("
        + ("the table's presets, then random space samples" if presets == "first" else "random space samples")
        + ")"
        if trials and trials < len(curves.ids)
        else "every configuration in each search"
    ) + ("; the table's presets left out (a search that enqueues none)" if presets == "none" else "")
    lines = [
        f"Table: {meta.get('dataset')} {meta.get('size')}x{meta.get('size')}, {len(curves.ids)} configurations x "
        f"{curves.length.shape[1]} seeds x {curves.max_epochs} epochs; decisions on {curves.decide_name}, "
        f"regret on {curves.report_name} (best configuration's mean final {curves.report_name} "
        f"{np.nanmax(curves.quality()):.4f}); noise ({noise_source}) {noise:.4f}; {rows[0]['orders']} random "
        f"orders, {per_search}, {concurrency} trials at once.",
        "",
        "| scheduler | trial-epochs (mean ± std) | of full | regret mean ± std | regret median | regret p90 | no champion |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheduler']} | {r['epochs_mean']:.0f} ± {r['epochs_std']:.0f} | {r['epochs_frac']:.2f} | "
            f"{r['regret_mean']:.4f} ± {r['regret_std']:.4f} | {r['regret_p50']:.4f} | {r['regret_p90']:.4f} | "
            f"{r['no_champion']} |"
        )
    lines += [
        "",
        f"Spearman rank correlation of epoch e's {curves.decide_name} with the final one (runs that "
        "ran every epoch): "
        + ", ".join(f"e{e} {rho:.2f}" for e, rho, _ in corr)
        + (f" (n = {corr[0][2]})" if corr else ""),
    ]
    if chosen:
        lines.append(
            f"Cheapest ASHA setting within the noise of the full budget's regret: **{chosen['scheduler']}**"
            f" ({chosen['epochs_frac']:.2f} of the full budget's trial-epochs, regret "
            f"{chosen['regret_mean']:.4f} vs {rows[0]['regret_mean']:.4f})."
        )
    else:
        lines.append("No ASHA setting stays within the noise of the full budget's regret.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    markers = {
        "full": ("k", "*"),
        "ASHA": ("tab:blue", "o"),
        "async": ("tab:green", "s"),
        "median": ("tab:red", "^"),
    }
    for r in rows:
        color, marker = next(v for k, v in markers.items() if r["scheduler"].startswith(k))
        ax.errorbar(
            r["epochs_frac"],
            r["regret_mean"],
            yerr=r["regret_std"],
            fmt=marker,
            color=color,
            alpha=0.8,
            capsize=2,
            markersize=6,
        )
        ax.annotate(
            r["scheduler"]
            .replace("async Hyperband (3 brackets)", "HB")
            .replace("median stopping", "med")
            .replace("ASHA ", "")
            .replace("grace ", "g")
            .replace(", rf ", "/"),
            (r["epochs_frac"], r["regret_mean"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    for k, (color, marker) in markers.items():
        ax.plot(
            [],
            [],
            marker,
            color=color,
            label={"full": "full budget", "async": "async Hyperband", "median": "median stopping"}.get(k, k),
        )
    ax.set_xlabel("trial-epochs, fraction of the full budget's")
    ax.set_ylabel("regret (mean ± std over orders)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python bench/simulate.py", description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path, help="a bench/curves.py parquet table")
    p.add_argument("--orders", type=positive_int, default=2000, help="random orders per scheduler")
    p.add_argument("--concurrency", type=positive_int, default=2, help="trials at once (the cpu budgets: 2)")
    p.add_argument(
        "--graces",
        default="1,2,3,5,8,10",
        help="grace periods (epochs) to try, those below the table's epochs",
    )
    p.add_argument("--rfs", default="2,3,4", help="reduction factors to try")
    p.add_argument("--decide", default=None, help="decision metric (default acc_val if present, else acc)")
    p.add_argument("--report", default=None, help="regret metric (default acc_test if present, else acc)")
    p.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help="replay a search of this many epochs: every curve cut there (default: the table's)",
    )
    p.add_argument(
        "--trials",
        type=positive_int,
        default=None,
        help="trials per simulated search: the presets, then random space samples of the table "
        "(default: every configuration; the entries' cpu budgets: digits 12, i-CLEVR 6)",
    )
    p.add_argument(
        "--presets",
        choices=("first", "none"),
        default="first",
        help="the table's preset rows: 'first' (enqueued before sampling, as a search given --presets) or "
        "'none' (left out: a search that enqueues none, as both entries' cpu budgets)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--plot", type=Path, default=None, help="also draw regret vs trial-epochs here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        try:
            from bench.curves import read_table
        except ModuleNotFoundError:  # run as a script: bench/ itself is on sys.path
            from curves import read_table

        if not args.table.is_file():
            raise ValueError(f"{args.table}: no such file")
        df, meta = read_table(args.table)
        if args.presets == "none":  # the search enqueues no preset (the cpu budgets): it never runs them
            df = df[~df["config_id"].astype(str).str.startswith("preset:")]
            if df.empty:
                raise ValueError(f"{args.table}: no configuration but presets, and --presets none")
        curves = curves_from_frame(df, decide=args.decide, report=args.report, max_epochs=args.max_epochs)
        graces = [int(x) for x in args.graces.split(",")]
        rfs = [float(x) for x in args.rfs.split(",")]
        rows = evaluate(
            curves,
            schedulers(curves.max_epochs, graces, rfs),
            orders=args.orders,
            concurrency=args.concurrency,
            seed=args.seed,
            trials=args.trials,
        )
        noise, noise_source = (
            curves.seed_noise(),
            "median std over seeds of the final "
            + curves.report_name
            + " of the best tenth (>= 3) of the configurations",
        )
        if not np.isfinite(noise):  # one seed per configuration: the evaluation's own spread over draws
            std = f"{curves.decide_name}_std" if f"{curves.decide_name}_std" in df.columns else "acc_std"
            if std not in df.columns:
                raise ValueError(f"{args.table}: one seed per configuration and no {std} column: no noise")
            last = df[(df["epoch"] == curves.max_epochs) & (df["diverged"].fillna(0) == 0)]
            noise, noise_source = (
                float(last[std].median()),
                f"one seed: median final {std}, the std over draws",
            )
        corr = rank_correlation(curves)
        chosen = choose(rows, noise)
        text = markdown(
            rows,
            curves=curves,
            meta=meta,
            noise=noise,
            concurrency=args.concurrency,
            corr=corr,
            chosen=chosen,
            noise_source=noise_source,
            trials=args.trials,
            presets=args.presets,
        )
        print(text)
        if args.md:
            args.md.parent.mkdir(parents=True, exist_ok=True)
            args.md.write_text(text)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"rows": rows, "noise": noise, "corr": corr, "chosen": chosen and chosen["scheduler"]},
                    indent=1,
                )
            )
        if args.plot:
            plot(
                rows,
                args.plot,
                f"{meta.get('dataset')} {meta.get('size')}px: {len(curves.ids)} configs, "
                f"{curves.max_epochs} epochs, {args.orders} orders",
            )
        return 0

    return run_command(body, (ValueError, OSError), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
