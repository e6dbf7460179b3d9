"""Register the best trial's generator in the MLflow model registry and point an alias at it.

    python -m search.promote --experiment NAME [--metric acc] [--alias champion] [--tracking-uri URI]

The best finished trial run of the experiment (by its final value of --metric) gives its checkpoint
artifact; the generator (EMA weights when the trial kept an EMA) is logged to that run as a pyfunc model
(search/pyfunc.py), registered as the search's model name (clevr-cgan, digits-cgan; or --model-name), the
alias set, and the version tagged with the config, metrics, and the data and evaluator fingerprints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from search.options import HelpFormatter, OneLineParser, default_home, tracking_uri_or_default
from search.tracking import PARENT_TAG, ROLE_TAG, STATE_TAG

LOWER_IS_BETTER = ("fid",)


class PromoteError(RuntimeError):
    """Nothing to promote, or an unknown experiment (one line, exit status 2)."""


def best_trial_run(client, experiment_id: str, metric: str):
    """The finished, non-failed trial run with the best final `metric` that has a checkpoint artifact."""
    order = "ASC" if metric in LOWER_IS_BETTER else "DESC"
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'FINISHED'",
        order_by=[f"metrics.`{metric}` {order}"],
        max_results=50,
    )
    for run in runs:
        if metric not in run.data.metrics or run.data.tags.get("search.diverged") == "true":
            continue
        if any(f.path == "checkpoint" for f in client.list_artifacts(run.info.run_id)):
            return run
    return None


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
    metric: str = "acc",
    alias: str = "champion",
    model_name: str | None = None,
    log: Callable[[str], None] = print,
):
    """Log, register and alias the best trial's generator; returns the ModelVersion."""
    import mlflow

    from search.pyfunc import GENERATOR_FILE, GeneratorModel, build, example_input, write_generator

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PromoteError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
    run = best_trial_run(client, exp.experiment_id, metric)
    if run is None:
        raise PromoteError(
            f"experiment {experiment!r} has no finished trial with a {metric!r} metric and a checkpoint"
        )
    parent = client.get_run(run.data.tags[PARENT_TAG])
    name = model_name or parent.data.tags.get("search.model_name") or f"{experiment}-cgan"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run.info.run_id, "checkpoint", tmp))
        checkpoint = next(p for p in sorted(folder.iterdir()) if p.suffix in (".pt", ".pth"))
        slim_path = Path(tmp) / GENERATOR_FILE
        slim = write_generator(checkpoint, slim_path)
        generator, config, info = build(slim)
        classes = list(info.get("classes") or [str(i) for i in range(int(info["n_classes"]))])
        example = example_input(classes)
        signature = None
        if config.g_cond != "none":
            model = GeneratorModel()
            model.generator, model.config, model.classes = generator, config, classes
            signature = mlflow.models.infer_signature(
                example, model.predict(None, example), params={"seed": 0}
            )
        mlflow.set_tracking_uri(client.tracking_uri)
        with mlflow.start_run(run_id=run.info.run_id):
            info_logged = mlflow.pyfunc.log_model(
                name="generator",
                python_model=GeneratorModel(),
                artifacts={"generator": str(slim_path)},
                signature=signature,
                pip_requirements=_requirements(),
            )
    version = mlflow.register_model(info_logged.model_uri, name)
    client.set_registered_model_alias(name, alias, version.version)
    tags = {
        "config": json.dumps(slim["config"], sort_keys=True),
        "ema": str(slim["ema"]).lower(),
        "trial_run_id": run.info.run_id,
        "trial_id": run.data.tags.get("ray.trial_id", ""),
        "experiment": experiment,
        "optuna_state": run.data.tags.get(STATE_TAG, ""),
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
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    log(
        f"registered {name} version {version.version} (alias {alias}) from trial {tags['trial_id']}: "
        f"{metric} {run.data.metrics[metric]:.4f}"
    )
    return version


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m search.promote",
        description="Register the best trial of a search as an MLflow model version and set an alias on it.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--experiment", required=True, help="the search's MLflow experiment (its --experiment)")
    p.add_argument("--metric", default="acc", help="rank trials by this final metric (fid: lower is better)")
    p.add_argument("--alias", default="champion", help="registry alias to point at the new version")
    p.add_argument("--model-name", help="registered model name (default: the search's, e.g. clevr-cgan)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///$CGAN_SEARCH_HOME/mlflow.db)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri_or_default(args.tracking_uri, default_home()))
    try:
        version = promote(
            client, args.experiment, metric=args.metric, alias=args.alias, model_name=args.model_name
        )
    except PromoteError as err:
        print(f"python -m search.promote: error: {err}", file=sys.stderr)
        return 2
    print(f"models:/{version.name}@{args.alias}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
