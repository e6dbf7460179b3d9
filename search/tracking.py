"""MLflow for the search: one parent run per search, one child run per trial, and exactly one writer.

Every MLflow call of a search happens in the driver process: the trials report to Tune, and
`TrialRunsCallback` (a Tune callback, run by the driver) turns their results into child-run metrics,
their checkpoints into grid and checkpoint artifacts. A local SQLite store therefore never sees two writers
("database is locked"); an http:// tracking server works the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from search.optuna_bridge import trial_state
from search.trial import CHECKPOINT_NAME, GENERATOR_NAME, GRIDS_DIR, REPORT_NAME

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "search.role"  # "search" (the parent) or "trial"
DIR_TAG = "search.experiment_dir"  # where Tune keeps the experiment: finds the parent again on resume
TRIAL_TAG = "ray.trial_id"
STATE_TAG = "optuna.state"  # COMPLETE / PRUNED / FAIL, as told to Optuna
NODE_KEY = "node_id"  # in a trial's results: the Ray node it ran on (search/trial.py)
NODE_TAG = "ray.node_id"  # the node of the trial's latest result
NODES_TAG = "ray.nodes"  # every node it reported from, in order (a retry elsewhere adds one)
CHECKPOINT_ARTIFACT = "checkpoint"  # the trial run's artifact folder search.promote reads
PRUNED_GENERATOR = ("none", "last")  # what a trial ASHA stopped keeps: nothing, or its last evaluation's G
_NOT_METRICS = set(AUTO_RESULT_KEYS) - {"time_total_s"} | {
    "done",
    "trial_id",
    "experiment_tag",
    "should_checkpoint",
}


def _unreachable(err: Exception) -> bool:
    """The server did not answer (connection refused, timed out) or answered 5xx after MLflow's retries."""
    import requests

    status = getattr(err, "get_http_status_code", lambda: 0)()
    return isinstance(err.__context__, requests.RequestException) or status >= 500


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


# How the MLflow UI shows a search (read in MLflow 3.17's UI bundle, mlflow/server/js/build). 3.17 opens every
# experiment on its GenAI overview unless the URL says `workflowType=machine_learning`; the experiment-kind tag
# is what earlier 3.x UIs read instead. The runs table takes its columns from a view state shared through an
# experiment tag and named in the URL (`viewStateShareKey`); it cannot carry which parents are unfolded, so
# the trial runs sit nested under the search run, one click on its "+" away.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # "Machine learning"; the default for a new experiment is GenAI
VIEW_KEY = "cgan-search"
# acc_val first: it is what the search decided on (--select val, the default); the test figures beside it
VIEW_COLUMNS = (
    "metrics.`acc_val`",
    "metrics.`acc`",
    "metrics.`acc_test`",
    "metrics.`acc_new_test`",
    f"tags.`{STATE_TAG}`",
)
UI_TAGS = {
    EXPERIMENT_KIND_TAG: TRAINING_KIND,
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps({"selectedColumns": list(VIEW_COLUMNS)}),
}


def ensure_experiment(client: MlflowClient, name: str, *, tracking_uri: str, artifact_root: Path) -> str:
    """The experiment's id, creating it if needed, with the UI tags above (added to an experiment an earlier
    version created without them). With a local store its artifacts go to an absolute `artifact_root/name`:
    MLflow's default, ./mlartifacts, would land in the (deleted) job directory."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None if is_server(tracking_uri) else (artifact_root / name).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location, tags=UI_TAGS)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in UI_TAGS.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def ui_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the training view with the search's columns (see UI_TAGS)."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def code_version(root: Path | None = None) -> dict[str, str]:
    """Git commit (+ dirty flag) when there is a checkout, and always a hash of the package sources, which
    survives `ray job submit` (the job's working dir is a copy without .git)."""
    root = root or Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("search", "trainers", "spaces"):
        for f in sorted((root / pkg).rglob("*")):
            if f.suffix in (".py", ".yaml", ".json") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    tags = {"search.code_sha256": h.hexdigest()[:16]}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
        tags["search.git_dirty"] = str(bool(dirty)).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def find_parent(client: MlflowClient, experiment_id: str, experiment_dir: str) -> str | None:
    """The parent run of an earlier, interrupted driver of the same Tune experiment."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'search' and tags.`{DIR_TAG}` = '{experiment_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def create_parent(
    client: MlflowClient,
    experiment_id: str,
    *,
    name: str,
    experiment_dir: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    run = client.create_run(
        experiment_id, run_name=name, tags={ROLE_TAG: "search", DIR_TAG: experiment_dir, **tags}
    )
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i : i + 100])


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """{Ray trial id: MLflow run id} of the parent's live child runs."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000
    )
    return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The trial's own numbers in a Tune result (Ray's bookkeeping and the config left out)."""
    out = {}
    for key, value in result.items():
        if key in _NOT_METRICS or isinstance(value, bool) and key != "diverged":
            continue
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
            out[key] = float(value)
    return out


class TrialRunsCallback(Callback):
    """Logs every trial to its own MLflow child run, from the driver (the only writer).

    A retried trial keeps its Ray trial id and so its run: epochs it repeats after resuming from a
    checkpoint are not logged twice. After a driver restart (`Tuner.restore`) the runs are found again by
    their trial-id tag; runs of trials the restored experiment never recorded (created in the last seconds
    before the kill) are deleted so the experiment holds exactly one run per trial.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        pruned_generator: str = "none",
    ):
        if pruned_generator not in PRUNED_GENERATOR:
            raise ValueError(f"pruned_generator {pruned_generator!r}: expected one of {PRUNED_GENERATOR}")
        self.pruned_generator = pruned_generator
        self.tracking_uri = tracking_uri
        self.presets = {name: dict(c) for name, c in (presets or {}).items()}
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, float] = {}
        self._preexisting: set[str] | None = None
        self._pending: list[tuple[str, list[Metric]]] = []  # batches the server did not take (see _log)
        self._nodes: dict[str, list[str]] = {}  # trial id -> Ray node ids it reported from, in order

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_client", "_runs", "_last_epoch", "_preexisting", "_pending", "_nodes"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            self._runs = child_runs(self._client, self.experiment_id, self.parent_run_id)
            self._preexisting = set(self._runs)
            for trial_id, run_id in self._runs.items():
                epoch = self._client.get_run(run_id).data.metrics.get("epoch")
                if epoch is not None:
                    self._last_epoch[trial_id] = epoch
        return self._client

    def setup(self, **info) -> None:
        _ = self.client

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._preexisting:  # once, after a restore: the restored experiment's trials are all known now
            known = {t.trial_id for t in trials}
            for trial_id in self._preexisting - known:
                logger.warning(
                    "deleting MLflow run of trial %s, which the restored experiment never recorded", trial_id
                )
                self.client.delete_run(self._runs.pop(trial_id))
        self._preexisting = set()

    def run_id(self, trial) -> str:
        """The trial's child run, created on first sight with the sampled config as params."""
        client = self.client
        if trial.trial_id not in self._runs:
            tags = {PARENT_TAG: self.parent_run_id, ROLE_TAG: "trial", TRIAL_TAG: trial.trial_id}
            preset = next((name for name, c in self.presets.items() if c == trial.config), None)
            if preset:
                tags["search.preset"] = preset
            run = client.create_run(self.experiment_id, run_name=trial.trial_id, tags=tags)
            log_params(client, run.info.run_id, trial.config)
            self._runs[trial.trial_id] = run.info.run_id
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = self.run_id(trial)
        epoch = result.get("epoch")
        if epoch is None or epoch <= self._last_epoch.get(trial.trial_id, -math.inf):
            return
        self._last_epoch[trial.trial_id] = epoch
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(epoch)) for k, v in metrics_of(result).items()]
        node = result.get(NODE_KEY)  # search/trial.py: the Ray node the trial reported from
        tags = []
        if node and self._nodes.setdefault(trial.trial_id, [])[-1:] != [node]:
            self._nodes[trial.trial_id].append(node)  # a retry on another node adds one
            tags = [RunTag(NODE_TAG, node), RunTag(NODES_TAG, ",".join(self._nodes[trial.trial_id]))]
        self._log(run_id, metrics, tags)

    def _log(self, run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        """log_batch that survives the tracking server being away. MLflow's client already retries a refused
        or failed request for ~4 minutes (7 tries, exponential backoff; the driver waits meanwhile); when even
        that fails, the batch is kept in memory and sent before the next one, so the search goes on and no
        metric is lost unless the driver itself dies with batches pending (each is logged as a warning)."""
        from mlflow.exceptions import MlflowException

        self._pending.append((run_id, metrics + tags))
        while self._pending:
            target, items = self._pending[0]
            try:
                self.client.log_batch(
                    target,
                    metrics=[m for m in items if isinstance(m, Metric)],
                    tags=[t for t in items if isinstance(t, RunTag)],
                )
            except MlflowException as err:
                if not _unreachable(err):
                    raise
                logger.warning(
                    "MLflow server unreachable (%s): %d metric batch(es) kept to send later",
                    " ".join(str(err).split())[:200],
                    len(self._pending),
                )
                return
            self._pending.pop(0)

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        """The sample grids of this evaluation, as grids/epoch_NNN/<condition set>.png. Only the grids are
        read (on remote storage, `as_directory` would download the full checkpoint at every evaluation)."""
        from pyarrow import fs as pafs

        epoch = int((trial.last_result or {}).get("epoch", 0))
        filesystem, folder = checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/{GRIDS_DIR}"
        found = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        with tempfile.TemporaryDirectory(prefix="cgan-grids-") as tmp:
            for entry in sorted((f for f in found if f.path.endswith(".png")), key=lambda f: f.path):
                local = Path(tmp) / entry.base_name
                _download(filesystem, entry.path, local)
                self.client.log_artifact(
                    self.run_id(trial), str(local), artifact_path=f"grids/epoch_{epoch:03d}"
                )

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.client.set_tag(self.run_id(trial), "search.retries", str(trial.run_metadata.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial, *, error: bool) -> None:
        """Tag the Optuna state, keep the trial's generator (once, in MLflow too), close the run.

        A trial that errored (retries exhausted) keeps its full checkpoint: `Tuner.restore(...,
        resume_errored=True)` retries it from there. Its scratch folder is the trial's own business."""
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        state = trial_state(result, error=error, max_epochs=self.max_epochs)
        tags = [
            RunTag(STATE_TAG, state),
            RunTag("search.diverged", str(bool(result.get("diverged"))).lower()),
        ]
        checkpoint = trial.checkpoint
        if checkpoint is not None and not error:
            keep = self.pruned_generator if state == "PRUNED" else "best"
            with tempfile.TemporaryDirectory(prefix="cgan-generator-") as tmp:
                kept = keep_generator(checkpoint, keep=keep, local=Path(tmp))
                for f in kept:
                    self.client.log_artifact(run_id, str(f), artifact_path=CHECKPOINT_ARTIFACT)
                report = json.loads(kept[-1].read_text()) if kept else {}
            generator_epoch = report.get("best_epoch") if keep == "best" else report.get("epoch")
            if kept and generator_epoch is not None:
                tags.append(RunTag("search.generator_epoch", str(generator_epoch)))
            drop_full_checkpoint(checkpoint)  # after MLflow has the generator: a failed upload loses nothing
        self.client.log_batch(run_id, tags=tags)
        status = RunStatus.to_string(RunStatus.FAILED if error else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status=status)


def keep_generator(checkpoint, *, keep: str, local: Path) -> list[Path]:
    """Make the ended trial's Tune checkpoint hold the generator it keeps, and copy what MLflow receives
    into `local`: [generator.pt, report.json], or [] when it keeps none.

    keep "best": the best evaluation's generator, already in the folder (search/trial.py). "last": the
    generator of the latest evaluation, slimmed from the full checkpoint (trainers.checkpoint, the one
    helper for "EMA weights else G"). "none": the generator file is deleted. Works on any Tune storage
    (pyarrow filesystem): only the small files travel, plus the full checkpoint for "last" on remote storage."""
    from pyarrow import fs as pafs

    from trainers.checkpoint import save_generator

    filesystem, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    generator = f"{root}/{GENERATOR_NAME}"
    if keep == "none":
        if _exists(filesystem, generator):
            filesystem.delete_file(generator)
        return []
    if keep == "last":
        full = f"{root}/{CHECKPOINT_NAME}"
        if isinstance(filesystem, pafs.LocalFileSystem):
            save_generator(full, generator)
        else:
            _download(filesystem, full, local / CHECKPOINT_NAME)
            save_generator(local / CHECKPOINT_NAME, local / GENERATOR_NAME)
            (local / CHECKPOINT_NAME).unlink()
            _upload(filesystem, local / GENERATOR_NAME, generator)
    if not _exists(filesystem, generator):
        return []  # no evaluation ever improved (no acc): nothing to keep
    out = []
    for name in (GENERATOR_NAME, REPORT_NAME):
        if not (local / name).is_file():
            _download(filesystem, f"{root}/{name}", local / name)
        out.append(local / name)
    return out


def drop_full_checkpoint(checkpoint) -> None:
    """Delete the trainer checkpoint (G, D, optimizer states) from an ended trial's Tune checkpoint."""
    path = f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_NAME}"
    if _exists(checkpoint.filesystem, path):
        checkpoint.filesystem.delete_file(path)


def _exists(filesystem, path: str) -> bool:
    from pyarrow import fs as pafs

    return filesystem.get_file_info(path).type == pafs.FileType.File


def _download(filesystem, path: str, local: Path) -> None:
    with filesystem.open_input_stream(path) as src, local.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _upload(filesystem, local: Path, path: str) -> None:
    with local.open("rb") as src, filesystem.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def mlflow_ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """What to run to see the runs; a password in the URI (a database store keeps it there) shows as ***."""
    from search.options import redacted

    if is_server(tracking_uri):
        url = redacted(tracking_uri)
        url = url if experiment_id is None else ui_url(url, experiment_id)
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        return f"open {url} in a browser" + (f" (log in as {user})" if user else "")
    command = f"mlflow ui --backend-store-uri {redacted(tracking_uri)}"
    if experiment_id is None:
        return command
    return f"{command}, then open {ui_url('http://127.0.0.1:5000', experiment_id)}"
