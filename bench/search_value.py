"""Does the search earn its compute? Five arms through the same driver, at equal total trial-epochs, per seed:

    nice -n 19 python bench/search_value.py --dataset digits --seeds 0 1

(a) `tpe-asha`, this search (TPE + ASHA, stopped trials told PRUNED: search/optuna_bridge.py);
(b) `stock-asha`, Ray's stock OptunaSearch with the same sampler + ASHA (it tells COMPLETE for stopped trials);
(c) `random-asha`, random search + ASHA;
(d) `preset`, each preset the space can express (search/driver.fitting_presets) trained alone for the
    trial-epochs (a) spent (one run of the driver, one trial per preset, side by side); "the best preset" is
    the one that ends with the best acc_val (the presets get that choice for free: a person trying each
    would pay for every one);
(e) `tpe-fifo`, this search without early stopping: trials of `max_epochs` each, as many as (a)'s trial-epochs
    buy (so fewer trials).

(a)-(c) run the entry's budget (the same number of trials, grace and reduction factor), so they spend about
the same trial-epochs but not exactly (ASHA's cuts depend on what the trials score); (a)'s figure is the one
(d) and (e) are given, and every arm's own spend is reported. A trial-epoch is one epoch of one trial (one
result row: every trial is evaluated once per epoch). An arm's champion is chosen as promotion chooses
(search/promote.py): among trials that ran max_epochs without diverging, the best final decision accuracy
(`acc_val`, the validation conditions; `acc` before those existed); its test accuracy is reported beside it.
Writes the raw figures (JSON) and a plot of best-so-far accuracy against trial-epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEARCH_ARMS = ("tpe-asha", "stock-asha", "random-asha")  # run first: (a)'s spend sizes the other two
ALL_ARMS = (*SEARCH_ARMS, "preset", "tpe-fifo")
VAL_KEYS = ("acc_val", "acc")  # the decision accuracy: the first present in a result
TEST_KEYS = ("acc_test", "acc")  # the reported test accuracy


def read_trials(experiment_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{trial id: its result rows in order} from Tune's trial folders (result.json, one JSON line each; the
    driver names them trial_<id>, Tune's default names differ); a trial with no result yet is left out."""
    trials = {}
    for path in sorted(Path(experiment_dir).glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials[rows[0]["trial_id"]] = rows
    return trials


def trial_epochs(trials: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    """Compute spent: one result row per trained epoch (a retried epoch counts again: it was trained again)."""
    return sum(len(rows) for rows in trials.values())


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> float:
    key = next((k for k in keys if k in row), None)
    return float(row[key]) if key is not None else math.nan


def _eligible(rows: Sequence[Mapping[str, Any]], max_epochs: int) -> bool:
    """Promotion's rule (search/promote.finished): ran max_epochs, did not diverge."""
    return bool(rows) and rows[-1].get("epoch", 0) >= max_epochs and not rows[-1].get("diverged")


def champion(trials: Mapping[str, Sequence[Mapping[str, Any]]], *, max_epochs: int) -> dict[str, Any] | None:
    """The eligible trial with the best final decision accuracy (ties: lower trial id), with its figures."""
    finals = [rows[-1] for rows in trials.values() if _eligible(rows, max_epochs)]
    finals = [r for r in finals if math.isfinite(_first(r, VAL_KEYS))]
    if not finals:
        return None
    best = min(finals, key=lambda r: (-_first(r, VAL_KEYS), r["trial_id"]))
    accs = {k: float(v) for k, v in best.items() if k.startswith("acc") and isinstance(v, int | float)}
    config = best.get("config", {})
    return {"trial_id": best["trial_id"], "epochs": best["epoch"], "acc_val": _first(best, VAL_KEYS),
            "acc_test": _first(best, TEST_KEYS), **{f"final_{k}": v for k, v in accs.items()},
            "config": config}  # fmt: skip


def _in_order(trials: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
    """Every result row in the order the search produced them (Tune's timestamp, then the epoch)."""
    rows = [row for rows in trials.values() for row in rows]
    return sorted(rows, key=lambda r: (r.get("timestamp", 0), r.get("time_total_s", 0), r.get("epoch", 0)))


def best_so_far(
    trials: Mapping[str, Sequence[Mapping[str, Any]]], *, max_epochs: int
) -> list[tuple[int, float, float]]:
    """(trial-epochs spent, best final decision accuracy so far, test accuracy of that trial): one point
    each time a trial finishes eligible, i.e. what the search would hand over if stopped there."""
    finals = {tid: rows[-1] for tid, rows in trials.items() if _eligible(rows, max_epochs)}
    curve, spent, best = [], 0, None
    for row in _in_order(trials):
        spent += 1
        if finals.get(row["trial_id"]) is row:
            if best is None or _first(row, VAL_KEYS) > _first(best, VAL_KEYS):
                best = row
            curve.append((spent, _first(best, VAL_KEYS), _first(best, TEST_KEYS)))
    return curve


def finals(trials: Mapping[str, Sequence[Mapping[str, Any]]], presets: Sequence[str]) -> list[dict[str, Any]]:
    """Each trial's last result in brief (epochs, acc_val, acc_test), named by its preset where it runs one."""
    from trainers.config import TrainConfig, load_preset

    named = {name: load_preset(name) for name in presets}
    out = []
    for tid, rows in trials.items():
        config = TrainConfig.from_dict(rows[-1]["config"]) if presets else None
        name = next((n for n, c in named.items() if c == config), "")
        out.append({"trial_id": tid, "preset": name, "epochs": rows[-1].get("epoch"),
                    "acc_val": _first(rows[-1], VAL_KEYS), "acc_test": _first(rows[-1], TEST_KEYS)})  # fmt: skip
    return out


def per_epoch(trials: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[tuple[int, float, float]]:
    """A lone trial (the preset arm): (epochs, decision accuracy, test accuracy) at every evaluation."""
    return [(i, _first(r, VAL_KEYS), _first(r, TEST_KEYS)) for i, r in enumerate(_in_order(trials), 1)]


class CpuMeter:
    """CPU-seconds of process `root` and every descendant (the Ray workers that run the trials), read from
    /proc every `every` seconds: a process's last figure before it ends counts, so each loses < `every` s."""

    def __init__(self, root: int, every: float = 2.0):
        import threading

        self._root, self._seen = root, {}
        self._every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def sample(self) -> None:
        from infra.processes import children_of

        for pid in (self._root, *children_of(self._root)):
            if (cpu := self._cpu(pid)) is not None:
                self._seen[pid] = max(cpu, self._seen.get(pid, 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def __enter__(self) -> CpuMeter:
        self.sample()
        self._start = sum(self._seen.values())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.seconds = sum(self._seen.values()) - self._start


class Children:
    """The arms' driver processes alive now, so that Ctrl-C stops all of them and starts no more: the seeds'
    threads each wait on one, a SIGINT reaches only the main thread (or, from a terminal, every process of
    the group), and a thread whose arm was interrupted must not go on to its next arm."""

    def __init__(self):
        import threading

        self._lock, self._live, self.stopping = threading.Lock(), set(), False

    def start(self, argv: list[str], **kw):
        import subprocess

        with self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = subprocess.Popen(argv, **kw)
            self._live.add(proc)
            return proc

    def wait(self, proc) -> int:
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._live.discard(proc)

    def interrupt_all(self) -> None:
        """As Ctrl-C in a terminal would: SIGINT to each (the driver stops its trials and exits 130)."""
        import signal

        with self._lock:
            self.stopping = True
            for proc in self._live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)


CHILDREN = Children()


def interrupted(code: int) -> bool:
    """The driver's own Ctrl-C exit (130), or Python's when SIGINT came before its handler (killed by it)."""
    import signal

    return code in (130, -signal.SIGINT)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One bench run: the entry and its budget for every arm, the seeds, where runs are kept."""

    dataset: str
    overrides: dict[str, Any]  # cpu budget fields of the entry that are no driver flags (scenes, floor)
    budget: Any  # search.budget.Budget: space, size, trials, epochs, grace, rf of arms (a)-(c)
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    presets: tuple[str, ...]  # arm (d): each trained alone
    out: Path  # Tune storage and the MLflow store of every arm
    extra: tuple[str, ...]  # driver flags for every arm (--evaluator, --max-concurrent, --cpus-per-trial)
    stamp: str
    worker_niceness: int | None = (
        None  # the trials' niceness, when the driver and Ray's daemons run at another
    )
    spent: dict[int, int] = dataclasses.field(default_factory=dict)  # seed: (a)'s trial-epochs on record


def _budget_flags(plan: Plan, *, trials: int, epochs: int, presets: str = "none") -> list[str]:
    b = plan.budget
    return ["--space", str(b.space), "--size", str(b.size), "--num-samples", str(trials),
            "--max-epochs", str(epochs), "--grace-epochs", str(min(b.grace_epochs, epochs)),
            "--reduction-factor", str(b.reduction_factor), "--presets", presets]  # fmt: skip


def driver_call(plan: Plan, arm: str, seed: int, spend: int) -> tuple[str, list[str]]:
    """(the driver's arm, its argv) for one arm and seed; `spend` is (a)'s trial-epochs for this seed."""
    b = plan.budget
    argv = ["--storage", str(plan.out / "ray_results"), "--tracking-uri", f"sqlite:///{plan.out / f'mlflow-s{seed}.db'}",
            "--experiment", f"sv-{plan.dataset}-{plan.stamp}-{arm}-s{seed}", "--seed", str(seed), *plan.extra]  # fmt: skip
    if arm in SEARCH_ARMS:
        return arm, argv + _budget_flags(plan, trials=b.num_samples, epochs=b.max_epochs)
    if arm == "tpe-fifo":  # as many full-length trials as (a)'s trial-epochs buy
        return arm, argv + _budget_flags(
            plan, trials=max(1, round(spend / b.max_epochs)), epochs=b.max_epochs
        )
    # each preset alone: one trial each, enqueued first by the same searcher, each for all of (a)'s trial-epochs
    trials, presets = len(plan.presets), ",".join(plan.presets)
    return "tpe-fifo", argv + _budget_flags(plan, trials=trials, epochs=spend, presets=presets)


def run_arm(plan: Plan, arm: str, seed: int, spend: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One arm, one seed, through search/driver.py's main in a process of its own (a fresh Ray: a second
    ray.init in one process timed out here under load); its figures read back from Tune's folders."""
    driver_arm, argv = driver_call(plan, arm, seed, spend)
    log(f"{arm} seed {seed}: search/driver.main(arm={driver_arm!r}) {' '.join(argv)}")
    load, start, began = os.getloadavg(), time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    commit = git_commit()  # the code the arm starts with: a commit landing while it runs is not its
    script = (
        "import sys; from bench.search_value import child; "
        f"sys.exit(child({plan.dataset!r}, {plan.overrides!r}, {driver_arm!r}, sys.argv[1:]))"
    )
    env = dict(os.environ)
    if plan.worker_niceness is not None:  # Ray's own: the raylet starts every worker at this niceness
        env["RAY_worker_niceness"] = str(plan.worker_niceness)
    proc = CHILDREN.start([sys.executable, "-c", script, *argv], cwd=ROOT, env=env)
    try:
        with CpuMeter(proc.pid) as cpu:
            code = CHILDREN.wait(proc)
    except KeyboardInterrupt:  # the main thread's (sequential seeds): stop the arm, then stop
        CHILDREN.interrupt_all()
        proc.wait()
        raise
    if interrupted(code) or CHILDREN.stopping and code != 0:  # no record of an arm cut short
        raise KeyboardInterrupt
    epochs = int(argv[argv.index("--max-epochs") + 1])
    trials = read_trials(plan.out / "ray_results" / argv[argv.index("--experiment") + 1])
    champ = champion(trials, max_epochs=epochs)
    if arm == "preset":  # the best preset's own curve; every preset's final figures beside it
        curve = per_epoch({k: v for k, v in trials.items() if champ and k == champ["trial_id"]})
    else:
        curve = best_so_far(trials, max_epochs=epochs)
    record = {"arm": arm, "seed": seed, "finals": finals(trials, plan.presets if arm == "preset" else ()), "exit": code, "argv": argv, "max_epochs": epochs,
              "started": began,
              "machine": machine(), "commit": commit,
              "trials": len(trials), "finished": sum(_eligible(r, epochs) for r in trials.values()),
              "trial_epochs": trial_epochs(trials), "champion": champ,
              "curve": curve, "cpu_s": round(cpu.seconds, 1), "wall_s": round(time.monotonic() - start, 1),
              "load_before": load, "load_after": os.getloadavg()}  # fmt: skip
    log(_one_line(record))
    return record


def _one_line(r: Mapping[str, Any]) -> str:
    c = r["champion"] or {}
    return (
        f"{r['arm']} seed {r['seed']}: exit {r['exit']}, {r['trials']} trials ({r['finished']} ran "
        f"{r['max_epochs']} epochs), {r['trial_epochs']} trial-epochs, champion {c.get('trial_id', '-')} "
        f"acc_val {c.get('acc_val', math.nan):.4f} acc_test {c.get('acc_test', math.nan):.4f}, "
        f"{r['cpu_s']:.0f} CPU-s, {r['wall_s']:.0f} s wall"
    )


def run_seed(plan: Plan, seed: int, log: Callable[[str], None], done: Callable[[dict], None]) -> None:
    """Every arm of one seed, (a) first: its trial-epochs are what (d) and (e) get (without (a) in the
    arms, those of its record from an earlier run, --append)."""
    spend = plan.spent.get(seed, 0)
    for arm in sorted(plan.arms, key=ALL_ARMS.index):
        if arm in ("preset", "tpe-fifo") and not spend:
            log(f"{arm} seed {seed}: skipped (tpe-asha spent no trial-epochs: nothing to match)")
            continue
        record = run_arm(plan, arm, seed, spend, log)
        spend = record["trial_epochs"] if arm == "tpe-asha" else spend
        done(record)


def run_plan(plan: Plan, log: Callable[[str], None], done: Callable[[dict], None], *, parallel: bool) -> None:
    """Every seed in turn, or side by side (one thread per seed, each running its arms in turn)."""
    from concurrent.futures import ThreadPoolExecutor

    if {"preset", "tpe-fifo"} & set(plan.arms) and "tpe-asha" not in plan.arms:
        if missing := [s for s in plan.seeds if s not in plan.spent]:
            raise ValueError(
                "arms preset and tpe-fifo need tpe-asha in --arms (its trial-epochs size them), or its "
                f"record in --results with --append: none for seed {missing[0]}"
            )
    if not parallel:
        for seed in plan.seeds:
            run_seed(plan, seed, log, done)
        return
    with ThreadPoolExecutor(len(plan.seeds)) as pool:
        futures = [pool.submit(run_seed, plan, seed, log, done) for seed in plan.seeds]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:  # only the main thread sees Ctrl-C: stop every seed's arm, start none
            CHILDREN.interrupt_all()
            for future in futures:
                try:
                    future.result()
                except KeyboardInterrupt:
                    pass
            raise


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _champ(records, arm: str, seed: int, key: str) -> float:
    """The arm's champion's figure for one seed; for the presets, that of the best one's (by acc_val)."""
    mine = [r["champion"] for r in records if r["arm"] == arm and r["seed"] == seed and r["champion"]]
    best = max(mine, key=lambda c: c["acc_val"], default=None)
    return float(best.get(key, math.nan)) if best else math.nan


def goals(records: Sequence[Mapping[str, Any]], plan: Plan) -> dict[str, Any]:
    """The issue's two goals, per seed and on average: (a) over (d) in acc_test; (a) against (e) in
    acc_val next to one evaluation's own noise, and (a)'s trial-epochs against the full-budget search of
    the same trials (every trial to max_epochs). Over every seed on record (--append adds earlier runs')."""
    seeds, out = sorted({*plan.seeds, *(r["seed"] for r in records)}), {}
    ran = {r["arm"] for r in records}  # this run's arms and --append's earlier ones
    if {"tpe-asha", "preset"} <= ran:
        gap = [
            _champ(records, "tpe-asha", s, "acc_test") - _champ(records, "preset", s, "acc_test")
            for s in seeds
        ]
        out["search_minus_preset_acc_test"] = {"per_seed": gap, "mean": _mean(gap), "goal": 0.05,
                                               "met": _mean(gap) >= 0.05}  # fmt: skip
    if {"tpe-asha", "tpe-fifo"} <= ran:
        diff = [
            _champ(records, "tpe-asha", s, "acc_val") - _champ(records, "tpe-fifo", s, "acc_val")
            for s in seeds
        ]
        noise = [
            max(_champ(records, a, s, "final_acc_val_std") for a in ("tpe-asha", "tpe-fifo")) for s in seeds
        ]
        out["asha_minus_fifo_acc_val"] = {"per_seed": diff, "noise_per_seed": noise, "mean": _mean(diff)}
    full = plan.budget.num_samples * plan.budget.max_epochs
    spent = [r["trial_epochs"] for r in records if r["arm"] == "tpe-asha"]
    out["asha_fraction_of_full_budget"] = {"full": full, "spent": spent, "fraction": _mean(spent) / full}
    return out


def table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per arm and seed, then each arm's mean."""
    head = "| arm | seed | trials (ran max) | trial-epochs | champion | acc_val | acc_test | CPU-s |\n"
    lines = [head + "|---|---|---|---|---|---|---|---|"]
    for arm in ALL_ARMS:
        rows = [r for r in records if r["arm"] == arm]
        for r in rows:
            c = r["champion"] or {}
            who = next((f["preset"] for f in r["finals"] if f["trial_id"] == c.get("trial_id")), "")
            who = f"{c.get('trial_id', '-')}{f' ({who})' if who else ''}"
            lines.append(f"| {arm} | {r['seed']} | {r['trials']} ({r['finished']}) | {r['trial_epochs']} | {who} | "
                         f"{c.get('acc_val', math.nan):.4f} | {c.get('acc_test', math.nan):.4f} | {r['cpu_s']:.0f} |")  # fmt: skip
        if len(rows) > 1:
            val = _mean([(r["champion"] or {}).get("acc_val", math.nan) for r in rows])
            test = _mean([(r["champion"] or {}).get("acc_test", math.nan) for r in rows])
            spend = _mean([r["trial_epochs"] for r in rows])
            lines.append(f"| **{arm}** | mean | | {spend:.1f} | | **{val:.4f}** | **{test:.4f}** | |")
    return "\n".join(lines)


COLORS = {"tpe-asha": "tab:red", "stock-asha": "tab:orange", "random-asha": "tab:gray",
          "preset": "tab:blue", "tpe-fifo": "tab:green"}  # fmt: skip


def plot(records: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Best-so-far decision accuracy (left) and the test accuracy of that trial (right) against trial-epochs;
    one line per arm and seed; the preset arm is its one trial's accuracy at every epoch. Arms often crown
    the same trial (the sampler's random startup trials are shared), so their lines are drawn nested: the
    first arm widest and underneath, each later one thinner on top, and an equal curve shows as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    styles = ("-", "--", ":", "-.")
    seeds = sorted({r["seed"] for r in records})
    for r in records:
        if not r["curve"]:
            continue
        x, val, test = zip(*r["curve"], strict=True)
        label = r["arm"] if r["seed"] == seeds[0] else None
        depth = len(ALL_ARMS) - 1 - ALL_ARMS.index(r["arm"])  # 0 for the last arm: thinnest, on top
        kw = {"color": COLORS[r["arm"]], "linestyle": styles[seeds.index(r["seed"]) % 4], "where": "post",
              "linewidth": 1.2 + 1.4 * depth, "zorder": 10 - depth, "solid_capstyle": "butt"}  # fmt: skip
        axes[0].step(x, val, label=label, **kw)
        axes[1].step(x, test, **kw)
    for ax, name in zip(axes, ("best-so-far acc_val (decision)", "acc_test of that trial"), strict=True):
        ax.set_xlabel("trial-epochs spent")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(
        fontsize=8,
        title=f"seeds {', '.join(map(str, seeds))}: "
        + " / ".join(styles[: len(seeds)])
        + "\n(equal lines nest)",
    )
    fig.suptitle(
        "\n".join(textwrap.wrap(title, 150)), fontsize=10
    )  # three runs' start times overflowed one line
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build_parser():
    from trainers.cli import OneLineParser, int_at_least, positive_int

    p = OneLineParser(prog="python bench/search_value.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", choices=("digits", "clevr"), required=True, help="search/digits.py or search/clevr.py"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="each seeds TPE and every trial of every arm"
    )
    p.add_argument("--arms", nargs="+", choices=ALL_ARMS, default=list(ALL_ARMS), help="arms to run")
    p.add_argument(
        "--presets", nargs="+", help="arm (d)'s presets (default: every preset the space can express)"
    )
    for name in ("num_samples", "max_epochs", "grace_epochs", "size"):
        p.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int, help="default: the entry's cpu budget"
        )
    p.add_argument("--reduction-factor", type=int_at_least(2), help="default: the entry's cpu budget")
    p.add_argument("--space", help="default: the entry's cpu budget")
    p.add_argument(
        "--scenes", type=positive_int, help="clevr: synthetic scenes to render (default: the cpu budget)"
    )
    p.add_argument("--data", help="the driver's --data (default: the entry's: digits, or synthetic i-CLEVR)")
    p.add_argument("--evaluator", help="a judge checkpoint for every arm (default: the driver's cached fit)")
    p.add_argument("--evaluator-floor", type=float, help="default: the entry's cpu budget")
    p.add_argument("--max-concurrent", type=positive_int, help="trials at once (default: what the CPUs hold)")
    p.add_argument(
        "--cpus-per-trial",
        type=positive_int,
        help="torch threads per trial (the driver's; default 1): arm (d) runs one trial per preset, so on a "
        "machine with more cores than presets x seeds they would sit idle; the CPU-s column counts them all",
    )
    p.add_argument(
        "--home", type=Path, help="search home for cached data and judges (default: $CGAN_SEARCH_HOME)"
    )
    p.add_argument(
        "--out", type=Path, help="Tune storage + MLflow store of the arms (default: HOME/search-value)"
    )
    p.add_argument("--results", type=Path, help="default: bench/results/search_value-DATASET.json")
    p.add_argument("--parallel-seeds", action="store_true", help="run the seeds side by side (arms in turn)")
    p.add_argument(
        "--worker-niceness",
        type=int,
        help="niceness of the trial workers only (RAY_worker_niceness): under a loaded machine a nice-19 "
        "Ray misses its raylet's 30 s start deadline (ray/_private/node.py), so run the bench itself at "
        "normal priority and the trials at 19",
    )
    p.add_argument(
        "--stamp", help="experiment names' time stamp: an earlier run's resumes its unfinished arms"
    )
    p.add_argument(
        "--from-results", action="store_true", help="only remake the table and plot from --results"
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="keep --results' records (an earlier run's seeds, another day or machine: each record says "
        "which) and add this run's; arms preset and tpe-fifo of a seed whose tpe-asha is on record get its "
        "trial-epochs; refused if that run's budget or presets differ",
    )
    p.add_argument("--plot", type=Path, help="default: docs/search-value-DATASET.png")
    return p


def fitting_preset_names(space: str | Path) -> list[str]:
    """The presets the space can express: the ones the driver would run (search/driver.fitting_presets)."""
    from search.driver import fitting_presets
    from search.options import _space_path
    from spaces import load_space
    from trainers.config import preset_names

    return list(fitting_presets(load_space(_space_path(str(space))), tuple(preset_names()))[0])


def entry_for(dataset: str, overrides: Mapping[str, Any]):
    """The entry's defaults, its cpu budget with `overrides` (fields the driver has no flag for)."""
    if dataset == "digits":
        from search.digits import DIGITS as entry
    else:
        from search.clevr import CLEVR as entry
    return dataclasses.replace(entry, cpu=dataclasses.replace(entry.cpu, **overrides))


def child(dataset: str, overrides: Mapping[str, Any], arm: str, argv: list[str]) -> int:
    """One arm's driver run (what run_arm starts in a process of its own)."""
    from search.driver import main

    return main(entry_for(dataset, overrides), argv, arm=arm)


def make_plan(args, parser) -> Plan:
    from search.options import default_home

    if args.home:
        os.environ["CGAN_SEARCH_HOME"] = str(args.home.expanduser().resolve())
    flags = ("num_samples", "max_epochs", "grace_epochs", "reduction_factor", "size", "space")
    given = {
        k: getattr(args, k) for k in (*flags, "scenes", "evaluator_floor") if getattr(args, k) is not None
    }
    overrides = {k: v for k, v in given.items() if k not in flags}
    budget = dataclasses.replace(entry_for(args.dataset, overrides).cpu, **given)
    presets = tuple(args.presets or fitting_preset_names(budget.space))
    if bad := [p for p in presets if p not in _preset_names()]:
        parser.error(f"--presets {bad[0]}: not a preset ({', '.join(_preset_names())})")
    extra = ["--evaluator", args.evaluator] if args.evaluator else []
    extra += ["--data", args.data] if args.data else []
    extra += ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []
    extra += ["--cpus-per-trial", str(args.cpus_per_trial)] if args.cpus_per_trial else []
    out = (args.out or default_home() / "search-value").expanduser().resolve()
    return Plan(dataset=args.dataset, overrides=overrides, budget=budget, seeds=tuple(args.seeds),
                arms=tuple(args.arms), presets=presets, out=out, extra=tuple(extra),
                stamp=args.stamp or time.strftime("%Y%m%d-%H%M%S"), worker_niceness=args.worker_niceness)  # fmt: skip


def _preset_names() -> list[str]:
    from trainers.config import preset_names

    return list(preset_names())


def machine() -> dict[str, Any]:
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    """HEAD, marked +uncommitted when the code the arms run (trainers, search, spaces, bench) differs from it."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        # the code that ran; bench/results is what it writes (this bench's own JSON, untracked until committed)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainers", "search", "spaces", "bench",
                                ":(exclude)bench/results"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+uncommitted" if dirty else "")


# What must agree for two runs' records to be one comparison: the budget every arm ran, arm (d)'s presets.
SAME_PLAN = ("dataset", "budget", "presets")


def earlier_records(saved: Mapping[str, Any], plan: Plan, path: Path) -> list[dict[str, Any]]:
    """--append: the records of an earlier run's JSON, refused (one line naming the key) if that run's plan
    differs from this one's; an arm and seed this run repeats is replaced once it finishes again."""
    mine = report(plan, [], "", (0.0, 0.0, 0.0))
    for key in SAME_PLAN:
        theirs, ours = saved.get(key), mine[key]
        if key == "budget":  # compare field by field to name the one that differs
            diff = next((k for k in ours if theirs is None or str(theirs.get(k)) != str(ours[k])), None)
            if diff is not None:
                got = "missing" if theirs is None else f"{diff}={theirs.get(diff)}"
                raise ValueError(f"--append {path}: its runs had {got}, this one {diff}={ours[diff]}")
        elif key == "presets" and list(theirs or []) != list(ours):
            # only arm (d) runs presets, and only one that ended well binds them (a failed or interrupted
            # one has no champion; rerun, it is replaced)
            if any(r.get("arm") == "preset" and r.get("exit") == 0 for r in saved.get("records", [])):
                raise ValueError(f"--append {path}: its arm (d) ran presets {theirs}, this one {list(ours)}")
        elif key == "dataset" and theirs is not None and theirs != ours:
            raise ValueError(f"--append {path}: its runs are on {theirs}, this one on {ours}")
    return list(saved.get("records", []))


def report(
    plan: Plan, records: list[dict[str, Any]], started: str, load, runs: Sequence[Mapping] = ()
) -> dict[str, Any]:
    b = plan.budget
    title = (f"{plan.dataset}, {b.size}x{b.size}, space {Path(str(b.space)).name}: {b.num_samples} trials <= "
             f"{b.max_epochs} epochs, ASHA grace {b.grace_epochs} rf {b.reduction_factor}; presets "
             f"{', '.join(plan.presets)}; {', '.join([*(r['started'] for r in runs), started])}")  # fmt: skip
    this = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
            "command": " ".join(sys.argv), "load_start": load, "load_end": os.getloadavg()}  # fmt: skip
    seeds = sorted({*plan.seeds, *(r["seed"] for r in records)})
    return {**this, "dataset": plan.dataset, "title": title, "budget": {k: str(v) for k, v in dataclasses.asdict(b).items()},
            "presets": list(plan.presets), "seeds": seeds, "arms": plan.arms, "runs": [*runs, this],
            "records": records, "goals": goals(records, plan)}  # fmt: skip


def bench(args, parser) -> int:
    """Run the plan, writing the JSON after every arm (a stopped bench keeps what ran); then the table and
    the plot. With --from-results, only the table and plot, from a JSON an earlier run wrote; with --append,
    that JSON's records are kept and this run's added (seeds split over sessions or machines)."""

    def say(text: str) -> None:  # one write per line: print writes text and newline apart, and seeds' threads
        sys.stdout.write(f"[search-value] {text}\n")  # share stdout (their lines ran together)
        sys.stdout.flush()

    plan = make_plan(args, parser)
    results = args.results or ROOT / "bench" / "results" / f"search_value-{plan.dataset}.json"
    if args.from_results or args.append:
        try:
            saved = json.loads(results.read_text())
        except FileNotFoundError:
            raise ValueError(f"--results {results}: no such file (nothing to read or append to)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--results {results}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if args.from_results:
        records, title = saved["records"], saved["title"]
    else:
        import threading

        records = earlier_records(saved, plan, results) if args.append else []
        spent = {r["seed"]: r["trial_epochs"] for r in records if r["arm"] == "tpe-asha"}
        plan = dataclasses.replace(plan, spent=spent)
        runs = [r for r in saved.get("runs", [])] if args.append else []
        if args.append:
            say(
                f"appending to {results}: {len(records)} earlier records, seeds {sorted({r['seed'] for r in records})}"
            )
        started, load, lock = time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg(), threading.Lock()
        results.parent.mkdir(parents=True, exist_ok=True)

        def done(record: dict) -> None:
            with lock:  # a repeated arm and seed replaces its earlier record only now that it has finished
                records[:] = [r for r in records if (r["arm"], r["seed"]) != (record["arm"], record["seed"])]
                records.append(record)
                results.write_text(
                    json.dumps(report(plan, records, started, load, runs), indent=1, default=str)
                )

        run_plan(plan, say, done, parallel=args.parallel_seeds)
        title = report(plan, records, started, load, runs)["title"]
    path = plot(records, args.plot or ROOT / "docs" / f"search-value-{plan.dataset}.png", title=title)
    say(f"figures: {results}; plot: {path}")
    print(table(records), flush=True)
    print(json.dumps(goals(records, plan), indent=1, default=str), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from trainers.cli import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: bench(args, parser), (ValueError,), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
