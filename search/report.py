"""What a search leaves behind on its parent run: the leaderboard, Optuna's plots, the study, the summary.

With `--objectives acc,fid` the leaderboard marks the Pareto-optimal trials (Optuna's `study.best_trials`)
and `pareto.png` plots acc against FID. The "best trial" line uses promotion's rule (search/promote.py):
among trials that ran to max_epochs and did not diverge, unless pruned ones are allowed.
Also the progress table Tune prints while trials run.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.optuna_bridge import load_study_and_trials, trial_state
from search.promote import FID_SLACK, choose, eligible, pareto_front

TOP = 10
SHOWN_PARAMS = ("arch", "loss", "g_cond", "d_cond", "d_norm", "lr_g", "lr_d", "batch_size")


def progress_reporter(objectives: Sequence[str]):
    """Tune's table, every 30 s, with the numbers that matter for this search."""
    from ray import tune

    decision = {objectives[0]: objectives[0]}  # acc_val unless --select test
    metrics = {"epoch": "epoch", **decision, "acc": "acc", **({"fid": "fid"} if "fid" in objectives else {})}
    return tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns=["arch", "loss", "g_cond", "d_cond"],
        max_report_frequency=30,
        max_progress_rows=12,
        sort_by_metric=True,
        metric=objectives[0],
        mode="max",
    )


@dataclass(frozen=True)
class Summary:
    rows: list[dict[str, Any]]  # every trial, best first
    best: dict[str, Any] | None
    counts: dict[str, int]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _is_acc_column(key: str) -> bool:
    return key.startswith("acc_") and not key.endswith("_std")


def leaderboard_rows(
    results,
    *,
    max_epochs: int,
    states: Mapping[str, str],
    presets: Mapping[str, Mapping[str, Any]],
    sort_by: str = "acc",
) -> list[dict[str, Any]]:
    """One row per trial: id, Optuna state, epochs trained, every acc_*, fid, the config. Best `sort_by`
    (the decision metric) first. `summarize` adds `pareto` (on the front or not) in multi-objective searches."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        error = result.error is not None
        state = states.get(trial_id) or trial_state(metrics, error=error, max_epochs=max_epochs)
        row = {
            "trial_id": trial_id,
            "state": state,
            "epochs": int(metrics.get("epoch", 0)),
            "acc": float(metrics.get("acc", math.nan)),
        }
        row.update({k: float(v) for k, v in sorted(metrics.items()) if _is_acc_column(k)})
        row["acc_std"] = float(metrics.get("acc_std", math.nan))
        if "acc_val_std" in metrics:
            row["acc_val_std"] = float(metrics["acc_val_std"])
        row["fid"] = float(metrics.get("fid", math.nan))
        row["diversity"] = float(metrics.get("diversity", math.nan))
        row["diverged"] = bool(metrics.get("diverged", 0))
        row["preset"] = next((name for name, c in presets.items() if dict(c) == config), "")
        row["config"] = json.dumps(config, sort_keys=True)
        row["_config"] = config
        rows.append(row)

    def rank(r: Mapping[str, Any]) -> float:
        value = float(r.get(sort_by, math.nan))
        return -value if not math.isnan(value) else 1.0

    rows.sort(key=lambda r: (rank(r), r["trial_id"]))
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], *, top: int = TOP, decision: str = "acc") -> str:
    """The leaderboard's first rows: the decision metric first, then acc (the test sets' mean) and each set."""
    acc_cols = sorted({k for r in rows for k in r if _is_acc_column(k)} - {decision})
    pareto = ["pareto"] if any("pareto" in r for r in rows) else []
    first = [decision] if decision != "acc" else []
    cols = ["#", "trial_id", "state", "epochs", *first, "acc", *acc_cols, "fid", *pareto]
    params = [p for p in SHOWN_PARAMS if any(p in r["_config"] for r in rows)]
    header = cols + params
    lines = [header]
    for i, r in enumerate(rows[:top], 1):
        cells = [str(i)] + [_fmt(r.get(c, "")) for c in cols[1:]]
        if pareto:
            cells[len(cols) - 1] = "*" if r.get("pareto") else ""
        cells += [_fmt(r["_config"].get(p, "")) for p in params]
        if r["diverged"]:
            cells[2] += "(diverged)"
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    fields = [k for k in rows[0] if not k.startswith("_")] if rows else ["trial_id"]
    extra = sorted({k for r in rows for k in r if not k.startswith("_")} - set(fields))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + extra, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: v for k, v in r.items() if not k.startswith("_")})
    return path


def optuna_plots(study, folder: Path, *, objectives: Sequence[str], log: Callable[[str], None]) -> list[Path]:
    """Optimization history and parameter importances (matplotlib), for the first objective (acc)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    target = (lambda t: t.values[0]) if len(objectives) > 1 else None
    name = objectives[0]
    out = []
    plots = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(
            study, target=target, target_name=name
        ),
        "param_importances.png": lambda: ovm.plot_param_importances(
            study,
            target=target,
            target_name=name,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        ),
    }
    for file, draw in plots.items():
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. too few COMPLETE trials
            log(f"no {file}: {' '.join(str(err).split())[:160]}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        fig.savefig(folder / file, dpi=100)
        plt.close(fig)
        out.append(folder / file)
    return out


def pareto_trials(study, trial_numbers: Mapping[str, int], rows: Sequence[Mapping[str, Any]], objectives):
    """Ray trial ids of the Pareto-optimal trials: Optuna's `study.best_trials` (COMPLETE trials only, so
    never one ASHA stopped); without a study, the same rule on the COMPLETE rows."""
    if study is not None:
        numbers = {t.number for t in study.best_trials}
        return {tid for tid, n in trial_numbers.items() if n in numbers}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    return {r["trial_id"] for r in pareto_front(complete, objectives)}


_ARCH_MARKERS = dict(zip(("dcgan", "infogan", "sagan", "resnet"), "o^sD", strict=True))
_PARETO_KINDS = {  # what pareto_plot draws: kind -> (which rows, scatter style)
    "Pareto front": (lambda r: r.get("pareto"), {"color": "tab:red"}),
    "finished": (lambda r: not r.get("pareto") and r["state"] == "COMPLETE", {"color": "tab:blue"}),
    "pruned (last evaluation)": (
        lambda r: r["state"] == "PRUNED",
        {"facecolors": "none", "edgecolors": "tab:gray"},
    ),
}


def pareto_plot(
    rows: Sequence[Mapping[str, Any]], path: Path, *, chosen: Mapping[str, Any] | None
) -> Path | None:
    """acc against FID for every trial with both: the front (red, joined), other finished trials (blue),
    pruned trials at their last evaluation (grey, hollow), the promoted choice (star); marker by arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if math.isfinite(r["acc"]) and math.isfinite(r["fid"])]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for kind, (member, style) in _PARETO_KINDS.items():
        for arch in sorted({r["_config"].get("arch", "?") for r in points}):
            group = [r for r in points if member(r) and r["_config"].get("arch", "?") == arch]
            if group:
                ax.scatter(
                    [r["fid"] for r in group], [r["acc"] for r in group], s=45,
                    marker=_ARCH_MARKERS.get(arch, "x"), label=f"{kind}, {arch}", **style,
                )  # fmt: skip
    front = sorted((r for r in points if r.get("pareto")), key=lambda r: r["fid"])
    if front:
        ax.step(
            [r["fid"] for r in front], [r["acc"] for r in front], where="post", color="tab:red", alpha=0.4
        )
        for r in front:
            ax.annotate(
                r["trial_id"], (r["fid"], r["acc"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    if chosen is not None and any(chosen is r for r in points):
        ax.scatter(
            [chosen["fid"]], [chosen["acc"]], s=320, marker="*", facecolors="none", edgecolors="black",
            label=f"best trial (promotion's rule): {chosen['trial_id']}",
        )  # fmt: skip
    hidden = len(rows) - len(points)
    ax.set_xlabel("FID in the judge's features (lower is better)")
    ax.set_ylabel("acc (higher is better)")
    ax.set_title(
        f"acc vs FID: {len(front)} Pareto-optimal of {sum(r['state'] == 'COMPLETE' for r in rows)} complete "
        f"trials" + (f"; {hidden} without a finite FID (diverged, failed) not shown" if hidden else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(
    results,
    *,
    client,
    parent_run_id: str,
    max_epochs: int,
    objectives: Sequence[str],
    ceiling: Mapping[str, float],
    ceiling_source: str,
    presets: Mapping[str, Mapping[str, Any]],
    log: Callable[[str], None],
    allow_pruned: bool = False,
    fid_slack: float = FID_SLACK,
    asha: tuple[int, int] | None = None,
) -> Summary:
    """Leaderboard printed and logged, plots and study logged, best (promotion's rule) vs. ceiling printed.
    `objectives` are result keys, the decision metric first (acc_val, or acc with --select test); with
    `asha` (grace, reduction factor) ASHA's own check (search/rungs.py) is printed and logged too."""
    study, trial_numbers = load_study_and_trials(results.experiment_path)
    states = {}
    if study is not None:
        by_number = {t.number: t for t in study.trials}
        states = {tid: by_number[n].state.name for tid, n in trial_numbers.items() if n in by_number}
    rows = leaderboard_rows(
        results, max_epochs=max_epochs, states=states, presets=presets, sort_by=objectives[0]
    )
    multi = len(objectives) > 1
    if multi:
        front = pareto_trials(study, trial_numbers, rows, objectives)
        for row in rows:
            row["pareto"] = row["trial_id"] in front
    counts = _counts(rows, log)
    print(format_table(rows, decision=objectives[0]), flush=True)
    checked = None
    if asha is not None:
        checked = rung_check(rows, client=client, parent_run_id=parent_run_id, max_epochs=max_epochs,
                             asha=asha, metric=objectives[0], log=log)  # fmt: skip
    candidates = eligible(rows, allow_pruned=allow_pruned, max_epochs=max_epochs)
    best, rule = choose(candidates, objectives=objectives, fid_slack=fid_slack)
    _log_files(
        client, parent_run_id, rows, study=study, best=best, objectives=objectives, log=log, checked=checked
    )
    metrics = _parent_metrics(counts, rows, best=best, ceiling=ceiling, multi=multi)
    if best is not None:
        client.set_tag(parent_run_id, "search.best_trial_id", best["trial_id"])
        client.set_tag(parent_run_id, "search.best_rule", rule)
    for key, value in metrics.items():
        if not math.isnan(value):
            client.log_metric(parent_run_id, key, value)
    _say_best(best, rule, rows, ceiling=ceiling, ceiling_source=ceiling_source, multi=multi,
              max_epochs=max_epochs, allow_pruned=allow_pruned, log=log, decision=objectives[0])  # fmt: skip
    return Summary(rows=rows, best=best, counts=counts)


def _counts(rows, log) -> dict[str, int]:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    counts["diverged"] = sum(r["diverged"] for r in rows)
    log(
        f"{len(rows)} trials: {counts['COMPLETE']} complete ({counts['diverged']} diverged), "
        f"{counts['PRUNED']} pruned by ASHA, {counts['FAIL']} failed"
    )
    return counts


def rung_check(rows, *, client, parent_run_id: str, max_epochs: int, asha: tuple[int, int], metric: str, log):
    """search/rungs.py's check of this search, its line printed; each cut trial's row gets cut_epoch,
    cut_gap (cut-off minus its score) and cut_noise (that evaluation's std over draws)."""
    from search import rungs

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    curves = rungs.from_mlflow(client, parent_run_id, experiment_id, metric=metric)
    ended = {r["trial_id"] for r in rows if r["diverged"] or r["state"] == "FAIL"}
    grace, rf = asha
    checked = rungs.check(curves, max_epochs=max_epochs, grace=grace, rf=rf, ended=ended, metric=metric)
    by_id = {r["trial_id"]: r for r in rows}
    for cut in checked.cuts:
        if cut.trial_id in by_id:
            by_id[cut.trial_id].update(cut_epoch=cut.epoch, cut_gap=cut.gap, cut_noise=cut.std)
    log(checked.line())
    return checked


def _log_files(client, parent_run_id: str, rows, *, study, best, objectives, log, checked=None) -> None:
    """leaderboard.csv, ASHA's check (rung_check.json/.png), pareto.png (several objectives), and the study
    with its plots, on the parent run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client.log_artifact(parent_run_id, str(write_csv(rows, folder / "leaderboard.csv")))
        if checked is not None:
            from search import rungs

            rungs.log(client, parent_run_id, checked, folder)
        if len(objectives) > 1 and pareto_plot(rows, folder / "pareto.png", chosen=best) is not None:
            client.log_artifact(parent_run_id, str(folder / "pareto.png"))
        if study is not None:
            (folder / "optuna").mkdir()
            with (folder / "optuna" / "study.pkl").open("wb") as f:
                pickle.dump(study, f)
            optuna_plots(study, folder / "optuna", objectives=objectives, log=log)
            client.log_artifacts(parent_run_id, str(folder / "optuna"), artifact_path="optuna")


def _parent_metrics(counts, rows, *, best, ceiling, multi: bool) -> dict[str, float]:
    """Trial counts, the best trial's accuracies (and FID), the ceiling: the parent run's metrics."""
    metrics = {f"n_{k.lower()}": float(v) for k, v in counts.items()}
    if multi:
        metrics["n_pareto"] = float(sum(r["pareto"] for r in rows))
    if best is not None:
        metrics.update(
            {
                f"best_{k}": v
                for k, v in best.items()
                if (k.startswith("acc") or k == "fid") and isinstance(v, float)
            }
        )
    metrics.update({f"ceiling_{k}": float(v) for k, v in ceiling.items()})
    return metrics


def _say_best(
    best, rule, rows, *, ceiling, ceiling_source, multi, max_epochs, allow_pruned, log, decision="acc"
) -> None:
    """The best trial (promotion's rule) against the ceiling, or why there is none."""
    if best is not None:
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in best.items() if k.startswith("acc") and not k.endswith("_std")
        )
        shown += f", fid {best['fid']:.4g}" if multi else ""
        ceil = ", ".join(f"{k} {v:.4f}" for k, v in ceiling.items())
        scope = "any trial that did not diverge" if allow_pruned else f"trials that ran {max_epochs} epochs"
        log(f"best trial {best['trial_id']} ({rule}, among {scope}): {shown}")
        log(f"ceiling ({ceiling_source}): {ceil}")
        if decision == "acc":
            log(
                "--select test: chosen on acc, the sets it is reported on, so its acc is optimistic"
                + (
                    f" (acc_val {best['acc_val']:.4f} was not read by any decision)"
                    if "acc_val" in best
                    else ""
                )
            )
        else:
            log(f"chosen on {decision}: its acc (the test sets' mean) was read by no decision")
    elif any(not math.isnan(r["acc"]) and r["state"] == "PRUNED" for r in rows):
        log(
            f"no trial ran {max_epochs} epochs without diverging: nothing to call best or promote "
            "(--allow-pruned chooses among the trials ASHA stopped too)"
        )
    else:
        log("no trial produced a result")
