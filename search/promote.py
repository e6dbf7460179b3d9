"""Register the best finished trial's generator in the MLflow model registry and point an alias at it.

    python -m search.promote --experiment NAME [--metric acc | --objectives acc,fid [--fid-slack 0.25]]
                             [--allow-pruned] [--alias champion] [--force] [--tracking-uri URI]

Candidates are the experiment's trial runs that ran to the search's `max_epochs` (the parent run's param)
and did not diverge: ASHA stops trials on an early score, and a lucky one-epoch accuracy is not a recipe's
result. `--allow-pruned` also admits trials ASHA stopped (their last evaluation). Among the candidates:
- one objective: the best final `--metric` (acc highest, fid lowest);
- `--objectives acc,fid`: the Pareto front of (acc max, FID min); of the front's trials whose FID is at most
  (1 + --fid-slack) x the lowest FID on the front, the one with the best acc (ties: lower FID).
The chosen run's checkpoint artifact gives the generator (EMA weights when the trial kept an EMA); it is
logged to that run as a pyfunc model (search/pyfunc.py), registered as the search's model name (clevr-cgan,
digits-cgan; or --model-name), the alias set, and the version tagged with the config, metrics, the rule
that chose it, and the data and evaluator fingerprints.

The alias moves only forward: when it already points at a version scored by the same judge on the same data
(equal fingerprints, so the same val label sets: trainers.evaluator.protocol.VAL_SEED is fixed) and that
version is better on the ranking metric (with --objectives acc,fid: it dominates the candidate), nothing is
registered and the alias stays, said in one line; `--force` moves it anyway. Likewise when it points at the
chosen trial's generator already. A version from another judge or other data is not comparable: the alias
moves, and the line says it was not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from search.options import HelpFormatter, OneLineParser, default_home, tracking_uri_or_default
from trainers.cli import run_command

LOWER_IS_BETTER = ("fid",)
MODEL_CODE = Path(__file__).with_name(
    "pyfunc_model.py"
)  # the registered model's code (MLflow models from code)
FID_SLACK = 0.25  # a front trial may have up to 25% more FID than the front's best to win on acc


class PromoteError(RuntimeError):
    """Nothing to promote, or an unknown experiment (one line, exit status 2)."""


class ChampionKept(Exception):  # noqa: N818 (an outcome, not an error: the CLI exits 0 on it)
    """The alias already points at a better comparable version: nothing was registered. `version` is that
    version; the message says why, in one line."""

    def __init__(self, message: str, version) -> None:
        super().__init__(message)
        self.version = version


def finished(row: Mapping[str, Any], max_epochs: int | None) -> bool:
    """Ran to max_epochs without diverging: Optuna state COMPLETE (search/optuna_bridge.trial_state) and
    not diverged, and, where the search's max_epochs is known, that many epochs trained."""
    if row["state"] != "COMPLETE" or row["diverged"]:
        return False
    return max_epochs is None or row["epochs"] >= max_epochs


def eligible(
    rows: Sequence[Mapping[str, Any]], *, allow_pruned: bool, max_epochs: int | None = None
) -> list[Mapping[str, Any]]:
    """Rows promotion may choose from: finished ones, or with `allow_pruned` any that neither failed nor
    diverged. A row's own `max_epochs` (its search's) wins over the argument."""
    if allow_pruned:
        return [r for r in rows if not r["diverged"] and r["state"] != "FAIL"]
    return [r for r in rows if finished(r, r.get("max_epochs", max_epochs))]


def _key(row: Mapping[str, Any], metric: str) -> float:
    value = float(row.get(metric, math.nan))
    return value if metric in LOWER_IS_BETTER else -value  # lower key is better


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[Mapping[str, Any]]:
    """The rows no other row dominates on `objectives` (acc higher, fid lower is better): at least as good
    on every objective and better on one. Rows lacking a finite value of an objective are left out."""
    points = [r for r in rows if all(math.isfinite(float(r.get(m, math.nan))) for m in objectives)]
    keys = [[_key(r, m) for m in objectives] for r in points]

    def dominated(a: list[float]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for b in keys)

    return [r for r, k in zip(points, keys, strict=True) if not dominated(k)]


def choose(
    rows: Sequence[Mapping[str, Any]], *, objectives: Sequence[str], fid_slack: float = FID_SLACK
) -> tuple[Mapping[str, Any] | None, str]:
    """(the row to promote or None, the rule as words) among candidate rows; see the module doc."""
    if len(objectives) == 1:
        metric = objectives[0]
        ranked = sorted(
            (r for r in rows if math.isfinite(float(r.get(metric, math.nan)))),
            key=lambda r: (_key(r, metric), r["trial_id"]),
        )
        return (ranked[0] if ranked else None), f"best final {metric}"
    front = pareto_front(rows, objectives)
    if not front:
        return None, f"Pareto front of {objectives[0]} and fid"
    acc = objectives[0]  # acc_val, or acc with --select test
    bound = min(float(r["fid"]) for r in front) * (1 + fid_slack)
    within = [r for r in front if float(r["fid"]) <= bound]
    best = min(within, key=lambda r: (-float(r[acc]), float(r["fid"]), r["trial_id"]))
    return (
        best,
        f"best {acc} on the Pareto front ({acc}, fid) with fid <= {bound:.4g} (lowest x {1 + fid_slack:g})",
    )


def trial_rows(client, experiment_id: str) -> list[dict[str, Any]]:
    """Every FINISHED trial run of the experiment as a row: trial_id, state, epochs, diverged, its final
    metrics, its search's max_epochs, and the run itself."""
    # search.tracking (mlflow, ray.tune: ~6 CPU-s) is imported by the functions that read runs, not at the
    # top: `python -m search.promote` then parses and refuses bad arguments before any of it loads
    from search.tracking import PARENT_TAG, ROLE_TAG, STATE_TAG, TRIAL_TAG

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'FINISHED'",
        max_results=50000,
    )
    max_epochs: dict[str, int | None] = {}
    rows = []
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG, "")
        if parent not in max_epochs:
            value = client.get_run(parent).data.params.get("max_epochs") if parent else None
            max_epochs[parent] = int(value) if value is not None else None
        metrics = run.data.metrics
        rows.append(
            {
                **{k: float(v) for k, v in metrics.items()},  # first: the tags below win over a metric
                "trial_id": run.data.tags.get(TRIAL_TAG, run.info.run_id),
                "state": run.data.tags.get(STATE_TAG, ""),
                "epochs": int(metrics.get("epoch", 0)),
                "diverged": run.data.tags.get("search.diverged") == "true",
                "max_epochs": max_epochs[parent],
                "_run": run,
            }
        )
    return rows


def best_trial_run(
    client,
    experiment_id: str,
    *,
    objectives: Sequence[str] = ("acc",),
    fid_slack: float = FID_SLACK,
    allow_pruned: bool = False,
):
    """(run, rule) of the candidate `choose` picks among trial runs that have a checkpoint artifact;
    raises PromoteError, saying why, when there is none."""
    rows = trial_rows(client, experiment_id)
    candidates = eligible(rows, allow_pruned=allow_pruned)
    with_checkpoint = [
        r
        for r in candidates
        if any(f.path == "checkpoint" for f in client.list_artifacts(r["_run"].info.run_id))
    ]
    row, rule = choose(with_checkpoint, objectives=objectives, fid_slack=fid_slack)
    if row is not None:
        return row["_run"], rule + ("" if allow_pruned else ", among trials that ran to max_epochs")
    pruned = sum(r["state"] == "PRUNED" for r in rows)
    diverged = sum(r["diverged"] for r in rows)
    need = "/".join(objectives)
    why = (
        f"{len(rows)} finished trial runs, {pruned} pruned by ASHA, {diverged} diverged, "
        f"{len(candidates)} that ran to max_epochs" + (" or were pruned" if allow_pruned else "")
    )
    hint = "" if allow_pruned or not pruned else "; --allow-pruned also considers trials ASHA stopped"
    raise PromoteError(f"no trial to promote with {need} and a checkpoint ({why}){hint}")


def aliased_version(client, name: str, alias: str):
    """The version `name@alias` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such model (sqlite: RESOURCE_DOES_NOT_EXIST) or no such alias on it
        raise


def outranked_by(old: Mapping[str, str], new: Mapping[str, str], objectives: Sequence[str]) -> str | None:
    """Why the version tagged `old` should keep its alias against a candidate tagged `new` (both a version's
    tags: fingerprints and metric.<name>), or None when the candidate should get it. Only comparable
    versions (same data and evaluator fingerprints, every objective recorded on both) can keep it; one
    objective: the old one is strictly better; several: the old one dominates (as good on all, better on one)."""
    for key in ("data_fingerprint", "evaluator_fingerprint"):
        if not old.get(key) or old.get(key) != new.get(key):
            return None
    try:
        pairs = [(float(old[f"metric.{m}"]), float(new[f"metric.{m}"])) for m in objectives]
    except (KeyError, ValueError):
        return None
    if not all(math.isfinite(a) for a, _ in pairs):
        return None
    better = [a < b if m in LOWER_IS_BETTER else a > b for m, (a, b) in zip(objectives, pairs, strict=True)]
    worse = [a > b if m in LOWER_IS_BETTER else a < b for m, (a, b) in zip(objectives, pairs, strict=True)]
    if not any(better) or any(worse):
        return None
    shown = ", ".join(f"{m} {a:.4g} vs {b:.4g}" for m, (a, b) in zip(objectives, pairs, strict=True))
    return shown if len(objectives) == 1 else f"it dominates: {shown}"


def comparison_note(old: Mapping[str, str], new: Mapping[str, str], objectives: Sequence[str]) -> str:
    """Why a previous version lost its alias, in words (for the promote line)."""
    for key, what in (("data_fingerprint", "data"), ("evaluator_fingerprint", "judge")):
        if not old.get(key) or old.get(key) != new.get(key):
            return f"not compared: scored with another {what}"
    missing = [m for m in objectives if f"metric.{m}" not in old]
    if missing:
        return f"not compared: it records no {'/'.join(missing)}"
    return ", ".join(f"{m} {float(old[f'metric.{m}']):.4g}" for m in objectives)


def _candidate_tags(run, parent) -> dict[str, str]:
    """The fingerprints and metrics a version of `run` would record, to weigh against the alias's version."""
    return {
        "data_fingerprint": parent.data.tags.get("search.data_fingerprint", ""),
        "evaluator_fingerprint": parent.data.tags.get("search.evaluator_fingerprint", ""),
        **{f"metric.{k}": f"{v:.6g}" for k, v in run.data.metrics.items()},
    }


def _keep_a_better_champion(current, candidate: Mapping[str, str], run, objectives, *, name: str, alias: str):
    """Raise ChampionKept when `current` (the aliased version) outranks the `candidate` tags of `run`, or
    is `run`'s generator already (a promotion run twice would register the same generator again)."""
    kept = f"kept models:/{name}@{alias} at version {current.version} (trial {current.tags.get('trial_id', '?')})"
    if current.tags.get("trial_run_id") == run.info.run_id:
        raise ChampionKept(
            f"{kept}: it is already this search's best; nothing registered; --force registers it again",
            current,
        )
    if why := outranked_by(current.tags, candidate, objectives):
        raise ChampionKept(
            f"{kept}: it is better than this search's best, trial {run.data.tags.get('ray.trial_id', '')} "
            f"({why}); nothing registered; --force moves the alias anyway",
            current,
        )


def decision_metric(client, experiment_id: str) -> str:
    """What the experiment's search decided on (its parent run's tag), else acc (searches before val sets)."""
    from search.tracking import ROLE_TAG

    parents = client.search_runs(
        [experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'search'", max_results=1,
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return parents[0].data.tags.get("search.decision_metric", "acc") if parents else "acc"


def _requirements() -> list[str]:
    out = []
    for name in ("torch", "torchvision", "numpy", "pandas", "pyyaml", "mlflow"):
        try:
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def promote(
    client,
    experiment: str,
    *,
    metric: str | None = None,
    objectives: Sequence[str] | None = None,
    fid_slack: float = FID_SLACK,
    allow_pruned: bool = False,
    alias: str = "champion",
    model_name: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
):
    """Log, register and alias the chosen trial's generator (module doc: the rule); returns the ModelVersion.
    `objectives` ("acc", "fid") chooses from the Pareto front of (`metric`, fid); else the best `metric`.
    `metric` None: the one the search decided on (its parent run's search.decision_metric: acc_val, or acc
    for a --select test search or one from before val sets). Raises ChampionKept (nothing registered) when
    `alias` points at a better comparable version, unless `force` (module doc)."""
    import mlflow

    from search.tracking import PARENT_TAG

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PromoteError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
    metric = metric or decision_metric(client, exp.experiment_id)
    objectives = (metric, *objectives[1:]) if objectives and len(objectives) > 1 else (metric,)
    try:
        run, rule = best_trial_run(
            client, exp.experiment_id, objectives=objectives, fid_slack=fid_slack, allow_pruned=allow_pruned
        )
    except PromoteError as err:
        raise PromoteError(f"experiment {experiment!r}: {err}") from None
    parent = client.get_run(run.data.tags[PARENT_TAG])
    name = model_name or parent.data.tags.get("search.model_name") or f"{experiment}-cgan"
    shown = ", ".join(f"{m} {run.data.metrics[m]:.4f}" for m in objectives)
    candidate = _candidate_tags(run, parent)
    current = aliased_version(client, name, alias)
    if current is not None and not force:
        _keep_a_better_champion(current, candidate, run, objectives, name=name, alias=alias)
    model_uri, slim, info = _log_generator_model(client, run.info.run_id)
    version = mlflow.register_model(model_uri, name)
    tags = _version_tags(run, parent, slim=slim, info=info, experiment=experiment, rule=rule)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    # the alias last: it never points at a version without the tags the next promotion weighs it by
    client.set_registered_model_alias(name, alias, version.version)
    moved = "" if current is None else f"; it was on version {current.version}: "
    if current is not None:
        moved += comparison_note(current.tags, candidate, objectives) + (", --force" if force else "")
    log(
        f"registered {name} version {version.version} (alias {alias}) from trial {tags['trial_id']}: "
        f"{shown} ({rule}){moved}"
    )
    return version


def _log_generator_model(client, run_id: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Log the trial's kept generator (its `checkpoint/` artifact) as a pyfunc model on its own run, with a
    signature when it is conditioned on labels; (model URI, generator file contents, data info)."""
    import mlflow

    from search.pyfunc import GENERATOR_FILE, GeneratorModel, example_input
    from trainers.checkpoint import load_generator, save_generator

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run_id, "checkpoint", tmp))
        checkpoint = next(p for p in sorted(folder.iterdir()) if p.suffix in (".pt", ".pth"))
        slim_path = Path(tmp) / GENERATOR_FILE
        slim = save_generator(checkpoint, slim_path)
        generator, config, info = load_generator(slim_path)
        classes = list(info.get("classes") or [str(i) for i in range(int(info["n_classes"]))])
        example = example_input(classes)
        signature = None
        if config.g_cond != "none":
            model = GeneratorModel().use(generator, config, info)
            signature = mlflow.models.infer_signature(
                example, model.predict(None, example), params={"seed": 0}
            )
        mlflow.set_tracking_uri(client.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info_logged = mlflow.pyfunc.log_model(
                name="generator",
                python_model=str(MODEL_CODE),  # models from code: no pickled PythonModel in the model
                artifacts={"generator": str(slim_path)},
                signature=signature,
                input_example=example if signature is not None else None,  # shown and validated by MLflow
                pip_requirements=_requirements(),
            )
    return info_logged.model_uri, slim, info


def _version_tags(run, parent, *, slim, info, experiment: str, rule: str) -> dict[str, str]:
    """What a registered version records: the recipe, where it came from and how it was chosen, its metrics."""
    from search.tracking import STATE_TAG

    return {
        "config": json.dumps(slim["config"], sort_keys=True),
        "ema": str(slim["ema"]).lower(),
        "trial_run_id": run.info.run_id,
        "trial_id": run.data.tags.get("ray.trial_id", ""),
        "experiment": experiment,
        "optuna_state": run.data.tags.get(STATE_TAG, ""),
        "selection": rule,
        "data_fingerprint": parent.data.tags.get("search.data_fingerprint", ""),
        "evaluator_fingerprint": parent.data.tags.get("search.evaluator_fingerprint", ""),
        "space_sha256": parent.data.tags.get("search.space_sha256", ""),
        "image_size": str(info["image_size"]),
        **{
            f"metric.{k}": f"{v:.6g}"
            for k, v in sorted(run.data.metrics.items())
            if k.startswith(("acc", "fid", "diversity", "epoch"))
        },
    }


def _objectives(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(","))
    if names not in (("acc",), ("acc", "fid")):
        raise argparse.ArgumentTypeError(f"expected 'acc' or 'acc,fid', got {text!r}")
    return names


def _alias(text: str) -> str:
    """MLflow's alias rules, checked before a version is registered (a refused alias left one registered
    without it): 1-255 letters, digits, _ or -; 'latest' and v<N> are reserved."""
    reserved = text.lower() == "latest" or re.fullmatch(r"[vV]\d+", text)
    if reserved or not re.fullmatch(r"[\w\-]{1,255}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: an alias is 1-255 letters, digits, _ or - ('latest' and v<N> are reserved)"
        )
    return text


def _model_name(text: str) -> str:
    if not text.strip() or "/" in text or ":" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a registered model name is non-empty, without '/' or ':'"
        )
    return text


def _slack(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0.25: up to 25% above), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m search.promote",
        description="Register the best finished trial of a search as an MLflow model version and set an "
        "alias on it. Candidates: trials that ran to the search's max_epochs and did not diverge (with "
        "--allow-pruned also those ASHA stopped). One objective: the best final --metric. --objectives "
        "acc,fid: among the Pareto-optimal trials (no other candidate is as good on both and better on "
        "one) whose FID is at most (1 + --fid-slack) x the lowest FID on the front, the highest acc. "
        "The alias only moves forward: if it points at a version scored by the same judge on the same data "
        "that is better on that metric (or dominates on acc,fid), nothing is registered and it stays "
        "(exit 0, one line); --force moves it anyway.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--experiment", required=True, help="the search's MLflow experiment (its --experiment)")
    p.add_argument(
        "--metric",
        help="one objective: rank by this final metric, e.g. acc_test (default: the one the search decided "
        "on, acc_val, or acc for a --select test search; fid: lowest)",
    )
    p.add_argument(
        "--objectives",
        type=_objectives,
        default="acc",
        help="'acc' (rank by --metric) or 'acc,fid' (choose from the Pareto front, see --fid-slack)",
    )
    p.add_argument(
        "--fid-slack",
        type=_slack,
        default=FID_SLACK,
        help="with --objectives acc,fid: how far above the front's lowest FID (as a fraction of it) a "
        "trial's FID may be to win on acc; 0 takes the lowest-FID trial, inf the highest acc",
    )
    p.add_argument(
        "--allow-pruned",
        action="store_true",
        help="also choose among trials ASHA stopped before max_epochs (their last evaluation)",
    )
    p.add_argument(
        "--alias", type=_alias, default="champion", help="registry alias to point at the new version"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="move the alias even when the version it points at is better (same judge, same data)",
    )
    p.add_argument(
        "--model-name",
        type=_model_name,
        help="registered model name (default: the search's, e.g. clevr-cgan)",
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///$CGAN_SEARCH_HOME/mlflow.db)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.metric and len(args.objectives) > 1:
        parser.error(
            f"--metric {args.metric} with --objectives {','.join(args.objectives)}: give one of them"
        )
    from mlflow.tracking import MlflowClient

    from search.options import redacted, tracking_scheme_problem, tracking_unreachable

    uri = tracking_uri_or_default(args.tracking_uri, default_home())  # a password moves to MLflow's env vars
    if problem := tracking_scheme_problem(uri) or tracking_unreachable(uri):  # MLflow retries for minutes
        parser.error(f"--tracking-uri {redacted(uri)}: {problem}")
    store = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if store is not None and not store.is_file():  # MLflow would create an empty store to look in
        parser.error(
            f"no MLflow experiment named {args.experiment!r}: no MLflow store at {store} (no search has "
            "tracked there; --tracking-uri names another)"
        )
    client = MlflowClient(uri)

    def body() -> None:
        try:
            version = promote(
                client,
                args.experiment,
                metric=args.metric,  # None: the search's own decision metric
                objectives=args.objectives,
                fid_slack=args.fid_slack,
                allow_pruned=args.allow_pruned,
                alias=args.alias,
                model_name=args.model_name,
                force=args.force,
            )
        except ChampionKept as kept:  # not an error: a job that promotes after every search goes on
            print(kept)
            version = kept.version
        print(f"models:/{version.name}@{args.alias}")

    return run_command(body, (PromoteError,), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
