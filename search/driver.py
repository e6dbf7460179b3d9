"""The one search driver. Entry scripts (search/clevr.py, search/digits.py) call `main(EntryDefaults)`.

`main`: options completed and checked (before Ray) -> `run`, in named steps on a local or cluster Ray:
`prepare_search` (options for the cluster, space + presets, data + judge, cached) -> `open_parent_run`
(MLflow) -> `make_or_restore_tuner` (OptunaSearch + ASHA, or Tuner.restore of the same experiment) -> `fit`
-> `finish` (leaderboard, plots, study, optional promotion, where everything is).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any

from search.budget import EntryDefaults
from search.options import Options, complete, for_cluster, parse
from trainers.cli import EXIT_FAILED, run_command

STRICT_FLOOR = 0.9  # the evaluator issue's guard; budgets may accept less (a CPU demo, a smoke test)


def _say(text: str) -> None:
    print(f"[search] {text}", flush=True)


class SearchFailed(Exception):
    """The search ran but cannot end well (no trial can be chosen): one line on stderr, exit status 1."""


class ResumeRefused(Exception):
    """An existing experiment named by a command that would change its plan: one line, exit status 2."""


# What a resumed experiment cannot change: Tuner.restore brings back the old trials, searcher and scheduler
# whatever the new flags say, so a rerun with another --num-samples silently ran the old plan. Resources
# (--max-concurrent, --cpus/--gpus-per-trial, --max-failures) may change: a resume on another cluster.
PLAN_PARAMS = ("num_samples", "max_epochs", "grace_epochs", "reduction_factor", "seed", "size", "presets",
               "objectives", "select")  # fmt: skip


def changed_plan(saved: dict[str, str], now: dict[str, Any]) -> str | None:
    """The first plan parameter the parent run recorded otherwise than this command says, as one line's
    middle ('--num-samples 2, this command 3'); None when none differs (a key the run lacks is skipped)."""
    for key in PLAN_PARAMS:
        if key in saved and key in now and str(now[key]) != saved[key]:
            return f"--{key.replace('_', '-')} {saved[key]}, this command {now[key]}"
    return None


def main(entry: EntryDefaults, argv: list[str] | None = None, *, arm: str = "tpe-asha") -> int:
    """The search's command line; `arm` names the searcher + scheduler (bench/search_value.py's arms)."""
    # Ray 2.60 turns token auth on for new local clusters; say so explicitly. It must be set before ray is
    # imported (the mode is read once, at import); `ray job submit` passes the cluster's own setting.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # MLflow prints "View run ... at: URL" twice for every run the driver closes (one per trial); the search
    # prints where its runs are once, at the end.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    args, parser = parse(entry, argv)
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        os.environ[LOOPBACK_ONLY_ENV] = "0"  # a local Ray: before anything imports ray (see start_ray)
    # bad input fails here, before Ray starts
    opts = dataclasses.replace(complete(args, parser, entry), arm=arm)
    from spaces import SpaceError
    from trainers.data import DataError
    from trainers.evaluator import EvaluatorError
    from trainers.registry import ConfigError

    def body() -> int:
        check_before_ray(opts, parser)
        return run(opts, args, parser)

    return run_command(
        body,
        (SpaceError, DataError, EvaluatorError, ConfigError, SearchFailed, ResumeRefused),
        prog=parser.prog,
        exit_codes={SearchFailed: EXIT_FAILED},
        # the experiment's name was fixed above (the default embeds the time): the same command resumes
        interrupted=f"interrupted: rerun the same command with --experiment {opts.experiment} to resume "
        "(finished trials are kept)",
    )


SPACE_CHECK_SAMPLES = 200  # what `python -m spaces check` samples: about a second, before Ray's ~10 s start


def check_before_ray(opts: Options, parser: argparse.ArgumentParser) -> None:
    """What can be refused in seconds is refused before Ray starts: the storage folder (pyarrow's error
    would come after Ray), the tracking server and Ray cluster addresses (MLflow and Ray retry an
    unreachable one for minutes), and the space's sampled configs (a config the trainer rejects would fail
    every trial, each retried --max-failures times)."""
    from pathlib import Path

    from search.options import folder_problem, ray_address_unreachable, redacted, tracking_unreachable
    from spaces.check import check_file

    if "://" not in opts.storage and (problem := folder_problem(Path(opts.storage), create=True)):
        parser.error(f"--storage {opts.storage}: {problem}")

    if problem := tracking_unreachable(opts.tracking_uri):
        parser.error(f"--tracking-uri {redacted(opts.tracking_uri)}: {problem}")
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address and (problem := ray_address_unreachable(address)):
        parser.error(f"{'--address' if opts.address else '$RAY_ADDRESS'} {address}: {problem}")
    _say(check_file(opts.space, samples=SPACE_CHECK_SAMPLES, seed=opts.seed))  # SpaceError: one line


# Ray 2.60 gives a new local node the machine's routable address, even for `_node_ip_address="127.0.0.1"`
# (worker.py: services.resolve_ip_for_localhost), and its GCS, raylet, workers and agents then listen on all
# interfaces. With this variable "0" (the macOS and Windows default, read once when ray is imported:
# ray_constants.ENABLE_RAY_CLUSTER) services.get_node_ip_address answers 127.0.0.1, every gRPC server binds
# loopback and the agents bind 127.0.0.1 (dashboard/agent.py: is_localhost). It also refuses
# `ray start --address` joins: right for a cluster that exists for this one search.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None) -> bool:
    """Connect to the cluster (--address, or $RAY_ADDRESS under `ray job submit`) or start a local one
    that listens on loopback only. Returns True when this process started Ray (and so must shut it down)."""
    target = address or os.environ.get("RAY_ADDRESS") or "local"  # never a stray cluster of another user
    local = target == "local"
    if local:
        os.environ[LOOPBACK_ONLY_ENV] = "0"
        secure_auth_token(create=os.environ.get("RAY_AUTH_MODE", "").lower() == "token")
    import ray
    from ray._private import ray_constants

    if local and ray_constants.ENABLE_RAY_CLUSTER:  # ray was imported before this function set the variable
        raise RuntimeError(
            f"set {LOOPBACK_ONLY_ENV}=0 before importing ray: a local Ray would listen on all interfaces"
        )
    ray.init(address=target, include_dashboard=False if local else None, log_to_driver=True,
             runtime_env=worker_runtime_env())  # fmt: skip
    secure_auth_token(create=False)  # a token file Ray wrote itself (0644) is tightened too
    return local


WORKER_SETUP = "search.worker_setup.quiet_sigterm_exit"  # drops Ray's SIGTERM traceback (its docstring: why)


def worker_runtime_env() -> dict[str, str] | None:
    """The job's runtime env as ray.init sees it: our worker setup hook, unless `ray job submit` gave the
    job one of its own (Ray merges the job's runtime env with ray.init's and refuses a field set twice; the
    user's hook wins, and workers then print Ray's SIGTERM tracebacks as before)."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    try:
        job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):  # not ours to judge: Ray reads it again and says what is wrong
        job = {}
    if job.get("worker_process_setup_hook"):
        return None
    return {"worker_process_setup_hook": WORKER_SETUP}


def secure_auth_token(*, create: bool) -> None:
    """Ray's token file (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) readable by its owner only: Ray 2.60
    writes it with the umask's mode (0644), and whoever reads it can run code on every node of the cluster.
    With `create`, a missing file is written here, 0600 from the start, with a token like Ray's own."""
    import secrets
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):  # the token comes from the environment: no file is read
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process wrote it first: tightened below
            pass
        else:
            with os.fdopen(fd, "w") as f:  # a token as ray/_private/authentication/ makes one
                f.write(secrets.token_hex(32))
    if path.is_file() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
        _say(f"{path}: made readable by its owner only (it was readable by others)")


class CheckedSpace:
    """The space's define-by-run function, refusing a sampled config the trainer would refuse before any
    trial runs it: Tune retries every failed trial (no error type is exempt in Ray 2.60,
    tune/experiment/trial.py: handle_error), and a config error only fails again. Presets are checked when
    they are loaded."""

    def __init__(self, space):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        from search.optuna_bridge import PRESET_ATTR
        from spaces import SpaceError
        from spaces.check import check_config
        from trainers.config import TrainConfig

        config = self.space.define_by_run(trial)
        if PRESET_ATTR not in trial.user_attrs:
            try:
                check_config(self.space, config, trial.number, TrainConfig)
            except SpaceError as err:
                detail = str(err).removeprefix(f"{self.space.path}: sample seed {trial.number}: ")
                raise SpaceError(f"{self.space.path}: Optuna trial {trial.number}: {detail}") from None
        return config


def fitting_presets(space, names: tuple[str, ...]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The presets every sampled value of which the space can take (`Space.fit`: so Optuna records them
    truly), and a note per preset skipped. A preset runs as written: where the space has a constant, the
    preset wins."""
    from trainers.config import load_preset

    fitting, notes = {}, []
    for name in names:
        config = load_preset(name).to_dict()
        misfits = space.fit(config).misfits
        if misfits:
            notes.append(f"preset {name} skipped: the space cannot express it: {'; '.join(misfits[:3])}")
        else:
            fitting[name] = config
    return fitting, notes


def auto_gpus_per_trial(opts: Options, space, prepared, resources: dict[str, float]) -> Options:
    """--gpus-per-trial auto: one probe step of the space's largest configs, on one whole GPU of the cluster
    (a Ray task), sets the fraction (search/packing.py). Prints what it chose and why."""
    import ray

    from search import packing

    configs = packing.largest_configs(space)
    meta, data = prepared.evaluator_meta, prepared.data
    task = ray.remote(num_gpus=1, num_cpus=opts.cpus_per_trial)(packing.probe)
    measured = ray.get(
        task.remote(
            configs,
            size=data.size,
            n_classes=data.n_classes,
            n_images=len(data),
            judge_width=int(meta.get("width", 64)),  # an official judge (no sidecar) is width 64
        )
    )
    fraction, why = packing.fraction(measured)
    _say(f"--gpus-per-trial auto: {fraction:g} ({why})")
    kinds = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
    if len(kinds) > 1:
        _say(
            f"note: the cluster mixes GPU types ({', '.join(kinds)}); the fraction was measured on a "
            f"{measured.gpu}: on smaller GPUs divide their memory by the need above (docs/search.md)"
        )
    return dataclasses.replace(opts, gpus_per_trial=fraction)


def interrupted(results, num_samples: int, *, tune_handler_fired: bool = False) -> bool:
    """Whether `Tuner.fit` returned because of Ctrl-C: Tune 2.60 catches the first SIGINT, saves the
    experiment and returns normally (tune/tune.py: experiment_interrupted_event), leaving trials unstarted
    or unfinished; a search that ran to its end has `num_samples` trials, each terminated or errored.
    That count misses a Ctrl-C once every trial has started: Tune's cleanup after the loop marks the running
    ones TERMINATED (its snapshot, taken before, keeps them RUNNING, so a rerun resumes them), and the search
    then looked finished (exit 1, "no trial can be chosen", or a leaderboard of half-trained trials).
    Hence `tune_handler_fired` (sigint_caught_by_tune)."""
    if tune_handler_fired:
        return True
    return len(results) < num_samples or results.num_terminated + results.num_errors < len(results)


class sigint_caught_by_tune:
    """Around Tuner.fit: whether Tune's own SIGINT handler fired. Tune 2.60 installs it for the run (main
    thread only, unless TUNE_DISABLE_SIGINT_HANDLER) and puts the previous handler back only when it fires
    (tune/tune.py: _setup_signal_catching); so the previous handler back in place after fit = a Ctrl-C (or
    Tune's SIGUSR1, its other stop signal)."""

    def __enter__(self):
        import signal
        import threading

        self._before = signal.getsignal(signal.SIGINT)
        self._watch = threading.current_thread() is threading.main_thread() and not int(
            os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0
        )
        self.fired = False
        return self

    def __exit__(self, *exc):
        import signal

        self.fired = self._watch and signal.getsignal(signal.SIGINT) is self._before
        return False


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def max_concurrent(opts: Options, resources: dict[str, float]) -> int:
    """What the cluster holds at the per-trial sizes, unless --max-concurrent says otherwise."""
    if opts.max_concurrent:
        return opts.max_concurrent
    n = int(resources.get("CPU", 1) // opts.cpus_per_trial) if opts.cpus_per_trial else 1_000_000
    if opts.gpus_per_trial:
        n = min(n, int(resources.get("GPU", 0) // opts.gpus_per_trial))
    return max(1, n)


def make_searcher(opts: Options, space, presets):
    """Seeded multivariate TPE (keyword-only arguments), PRUNED reporting, presets first."""
    import optuna

    from search.optuna_bridge import PresetOptunaSearch

    multi = len(opts.objectives) > 1
    return PresetOptunaSearch(
        CheckedSpace(space),
        metric=list(opts.decision_metrics) if multi else opts.decision,
        mode=list(opts.modes) if multi else opts.modes[0],
        sampler=optuna.samplers.TPESampler(
            seed=opts.seed,
            multivariate=True,
            group=True,  # conditional parameters: model each branch's parameters jointly
            constant_liar=True,  # running trials count as bad guesses: parallel trials spread out
            n_startup_trials=min(10, max(2, opts.num_samples // 3)),
        ),
        max_epochs=opts.max_epochs,
        presets=presets,
    )


def checkpoint_config():
    """The latest checkpoint per trial only: it holds the latest full trainer checkpoint (a retry resumes
    from it) and the best evaluation's generator (search/trial.py), so no second, "best" checkpoint with
    D and optimizer states is kept. When a trial ends, TrialRunsCallback drops the full checkpoint."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=1)


def make_tuner(opts: Options, trainable, *, searcher, callback, concurrency: int):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import arms
    from search.report import progress_reporter

    # ASHA on opts.decision (acc_val unless --select test), or another arm's (search/arms.py)
    scheduler = arms.make_scheduler(opts, opts.arm)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            # metric and mode live on the searcher and the scheduler (giving them twice raises)
            scheduler=scheduler,
            num_samples=opts.num_samples,
            trial_dirname_creator=trial_dirname,  # the default embeds the whole config in the path
        ),
        run_config=tune.RunConfig(
            name=opts.experiment,
            storage_path=opts.storage,
            callbacks=[callback, *arms.scheduler_callbacks(scheduler)],  # ASHA's rungs survive a resume
            checkpoint_config=checkpoint_config(),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=progress_reporter(opts.decision_metrics),
            verbose=1,
        ),
    )


@dataclass(frozen=True)
class Search:
    """One search once Ray is up: the options completed for the cluster, the space, the presets that fit it,
    how many trials run at once, and the prepared data and judge (search/prepare.py)."""

    opts: Options
    space: Any
    presets: dict[str, dict[str, Any]]
    concurrency: int
    prepared: Any


@dataclass(frozen=True)
class ParentRun:
    """The search's MLflow parent run, and the Tune experiment it belongs to."""

    client: Any  # MlflowClient
    experiment_id: str
    run_id: str
    experiment_dir: str
    resuming: bool  # the Tune experiment exists: Tuner.restore, the interrupted driver's parent run


def run(opts: Options, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """prepare -> open the parent run -> tuner -> fit -> finish, on the Ray this process joins or starts."""
    import optuna
    import ray

    # The legacy reporter prints one compact table (CLIReporter columns) every 30 s instead of a box per
    # result; a forced experiment snapshot per checkpoint (num_to_keep=1) is what makes resume exact.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # group=True, plots
    started = start_ray(opts.address)
    try:
        search = prepare_search(opts, args, parser)
        parent = open_parent_run(search)
        search = keep_val(search, parent)
        tuner = make_or_restore_tuner(search, parent)
        results = fit(tuner, search, parent)
        return finish(search, parent, results)
    finally:
        if started:
            ray.shutdown()


def prepare_search(opts: Options, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Search:
    """The options for this cluster, the space and presets, the data and judge (rendered and fitted once,
    cached), and with --gpus-per-trial auto the measured fraction. Says what it chose."""
    import ray

    from search.prepare import prepare
    from spaces import load_space

    resources = ray.cluster_resources()
    opts = for_cluster(opts, args, parser, resources.get("GPU", 0))
    space = load_space(opts.space)
    presets, notes = fitting_presets(space, opts.presets)
    concurrency = max_concurrent(opts, resources)
    _say(
        f"{opts.experiment}: {opts.budget_name} budget, space {opts.space.name} ({space.summary()}), "
        f"{opts.num_samples} trials <= {opts.max_epochs} epochs, ASHA grace {opts.grace_epochs} rf "
        f"{opts.reduction_factor}, {'how many at once: measured below' if opts.gpus_auto else concurrency} "
        f"({opts.cpus_per_trial:g} CPU, {'auto' if opts.gpus_auto else f'{opts.gpus_per_trial:g}'} GPU each), "
        f"presets: {', '.join(presets) or 'none'}"
    )
    for note in notes:
        _say(note)
    prepared = prepare(opts, log=_say)
    _say_judge(opts, prepared)
    if opts.gpus_auto:
        opts = auto_gpus_per_trial(opts, space, prepared, resources)
        concurrency = max_concurrent(opts, resources)
        _say(f"{concurrency} trials at once")
    return Search(opts=opts, space=space, presets=presets, concurrency=concurrency, prepared=prepared)


def _say_judge(opts: Options, prepared) -> None:
    data = prepared.data
    judge_acc = float(prepared.evaluator_meta.get("judge_acc", float("nan")))
    source = prepared.evaluator_meta.get("judge_acc_source", "held-out")
    if judge_acc < STRICT_FLOOR:
        _say(
            f"warning: the evaluator's {source} accuracy {judge_acc:.3f} is below {STRICT_FLOOR}, the floor "
            f"of real searches (this run accepts >= {opts.evaluator_floor}): read its accuracies as rough"
        )
    _say(
        f"data {prepared.data_spec}: {len(data)} images at {data.size}px (fingerprint {data.fingerprint}); "
        f"evaluator {prepared.evaluator_path} ({source} acc {judge_acc:.3f}, the floor applies to it)"
    )


def open_parent_run(search: Search) -> ParentRun:
    """This search's parent run, or the one of the interrupted driver whose Tune experiment is restored."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from ray import tune

    from search import tracking

    opts = search.opts
    mlflow.set_tracking_uri(opts.tracking_uri)
    client = MlflowClient(opts.tracking_uri)
    experiment_id = tracking.ensure_experiment(
        client, opts.experiment, tracking_uri=opts.tracking_uri, artifact_root=opts.home / "mlartifacts"
    )
    experiment_dir = f"{opts.storage.rstrip('/')}/{opts.experiment}"
    resuming = tune.Tuner.can_restore(experiment_dir)
    run_id = tracking.find_parent(client, experiment_id, experiment_dir) if resuming else None
    if run_id is not None:
        if diff := changed_plan(client.get_run(run_id).data.params, _parent_params(search)):
            raise ResumeRefused(
                f"--experiment {opts.experiment}: that search exists and ran with {diff}; rerun its own "
                "command to resume it, or name a new --experiment"
            )
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = tracking.create_parent(
            client,
            experiment_id,
            name=f"search-{opts.experiment}",
            experiment_dir=experiment_dir,
            tags=_parent_tags(search),
            params=_parent_params(search),
        )
    return ParentRun(client, experiment_id, run_id, experiment_dir, resuming)


VAL_ARTIFACT = "val_conditions.json"  # on the parent run: the val label sets this search decides on


def keep_val(search: Search, parent: ParentRun) -> Search:
    """The val set saved with the search: a new search logs the one it drew to its parent run; a resumed
    one reads it back from there, so its later trials are judged on the same label sets as its first
    (whatever the code that draws them does today)."""
    from trainers.evaluator.protocol import VAL

    opts, prepared = search.opts, search.prepared
    drawn, classes = prepared.conditions[VAL], prepared.data.classes
    saved = _saved_val(parent, classes) if parent.resuming else None
    if saved is None:
        _save_val(parent, drawn, classes)
        saved = drawn
    elif not (saved.shape == drawn.shape and (saved == drawn).all()):
        _say("the val set saved with this search differs from today's draw: the saved one is kept")
    if opts.select == "test":
        _say(
            "--select test: ASHA, TPE and the best trial read acc, the test sets' accuracy, so the acc "
            "reported for the chosen trial is optimistic (chosen on the sets it is reported on)"
        )
    _say(
        f"val set: {len(saved)} label sets (parent run artifact {VAL_ARTIFACT}); decisions read {opts.decision}"
    )
    conditions = {**prepared.conditions, VAL: saved}
    return dataclasses.replace(search, prepared=dataclasses.replace(prepared, conditions=conditions))


def _save_val(parent: ParentRun, rows, classes) -> None:
    """The val rows as label names (test.json's format), with the seed that drew them, on the parent run."""
    import json
    import tempfile
    from pathlib import Path

    from trainers.data.labels import decode_labels
    from trainers.evaluator.protocol import VAL_SEED

    named = [decode_labels(row, classes) for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / VAL_ARTIFACT
        path.write_text(json.dumps({"seed": VAL_SEED, "classes": list(classes), "val": named}))
        parent.client.log_artifact(parent.run_id, str(path))


def _saved_val(parent: ParentRun, classes):
    """The val rows saved on the parent run, (N, C); None when it has none (a search from before val sets)."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np
    from mlflow.exceptions import MlflowException

    from trainers.data.labels import encode_labels

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = parent.client.download_artifacts(parent.run_id, VAL_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return None
        saved = json.loads(Path(path).read_text())
    where = f"parent run {parent.run_id}: {VAL_ARTIFACT}"
    return np.stack([encode_labels(row, classes, where=where) for row in saved["val"]])


def _parent_tags(search: Search) -> dict[str, str]:
    from search import tracking

    opts, prepared = search.opts, search.prepared
    meta = prepared.evaluator_meta
    return {
        "search.entry": opts.entry.name,
        "search.model_name": opts.entry.model_name,
        "search.space": str(opts.space),
        "search.space_sha256": search.space.sha256,
        "search.data": prepared.data_spec,
        "search.data_fingerprint": prepared.data.fingerprint,
        "search.evaluator": str(prepared.evaluator_path),
        "search.evaluator_fingerprint": prepared.evaluator_fingerprint,
        "search.evaluator_data_fingerprint": str(meta.get("data_fingerprint")),
        "search.evaluator_heldout_acc": str(meta.get("heldout_acc")),
        # the figure the floor was applied to, and whether it is a held-out score or one measured on the
        # training images (a judge given without a record for this data), which flatters a judge fitted on them
        "search.evaluator_acc": str(meta.get("judge_acc")),
        "search.evaluator_acc_source": str(meta.get("judge_acc_source")),
        "search.objectives": ",".join(opts.objectives),
        "search.select": opts.select,
        "search.decision_metric": opts.decision,  # what search.promote ranks by unless told otherwise
        "search.budget": opts.budget_name,
        **tracking.code_version(),
    }


def _parent_params(search: Search) -> dict[str, Any]:
    opts = search.opts
    return {
        "num_samples": opts.num_samples,
        "max_epochs": opts.max_epochs,
        "grace_epochs": opts.grace_epochs,
        "reduction_factor": opts.reduction_factor,
        "gpus_per_trial": opts.gpus_per_trial,
        "cpus_per_trial": opts.cpus_per_trial,
        "max_concurrent": search.concurrency,
        "max_failures": opts.max_failures,
        "seed": opts.seed,
        "size": search.prepared.data.size,
        "presets": ",".join(search.presets) or "none",
        "objectives": ",".join(opts.objectives),
        "select": opts.select,
    }


def make_or_restore_tuner(search: Search, parent: ParentRun):
    """The trainable with the data and judge in Ray's object store, and a new Tuner, or the interrupted
    search's restored (finished trials kept, the study continues)."""
    from ray import tune

    from search import arms, tracking
    from search.trial import TrialSetup, run_trial

    opts, prepared = search.opts, search.prepared
    setup = TrialSetup(
        evaluator=prepared.evaluator_path.read_bytes(),
        evaluator_meta=prepared.evaluator_meta,
        conditions=prepared.conditions,
        max_epochs=opts.max_epochs,
        seed=opts.seed,
        cpus=opts.cpus_per_trial,
        use_gpu=opts.gpus_per_trial > 0,
        decision=opts.decision,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, data=prepared.data, setup=setup
        ),  # in the object store once per search
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial},
    )
    if parent.resuming:
        _say(f"resuming {parent.experiment_dir} (finished trials are kept, the study continues)")
        return tune.Tuner.restore(parent.experiment_dir, trainable, resume_errored=True)
    callback = tracking.TrialRunsCallback(
        tracking_uri=opts.tracking_uri,
        experiment_id=parent.experiment_id,
        parent_run_id=parent.run_id,
        max_epochs=opts.max_epochs,
        presets=search.presets,
        pruned_generator=opts.pruned_generator,  # kept with the callback when a search resumes
    )
    searcher = arms.make_searcher(opts, search.space, search.presets, opts.arm)  # make_searcher by default
    return make_tuner(opts, trainable, searcher=searcher, callback=callback, concurrency=search.concurrency)


def fit(tuner, search: Search, parent: ParentRun):
    """Tuner.fit, with the parent run KILLED on Ctrl-C (rerun the same command to resume) or FAILED."""
    try:
        with sigint_caught_by_tune() as caught:
            results = tuner.fit()
    except BaseException as err:  # Ctrl-C twice (Tune's last snapshot skipped), a sampled config refused
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        parent.client.set_terminated(parent.run_id, status=status)
        raise
    if interrupted(results, search.opts.num_samples, tune_handler_fired=caught.fired):
        parent.client.set_terminated(parent.run_id, status="KILLED")
        raise KeyboardInterrupt
    return results


def finish(search: Search, parent: ParentRun, results) -> int:
    """Leaderboard, plots and study on the parent run, the optional promotion, where everything is."""
    from search import report

    opts, client = search.opts, parent.client
    summary = report.summarize(
        results,
        client=client,
        parent_run_id=parent.run_id,
        max_epochs=opts.max_epochs,
        objectives=opts.decision_metrics,  # acc_val (and fid) unless --select test
        ceiling=search.prepared.ceiling,
        ceiling_source=search.prepared.ceiling_source,
        presets=search.presets,
        log=_say,
        allow_pruned=opts.allow_pruned,
        asha=(opts.grace_epochs, opts.reduction_factor),
    )
    if opts.promote and summary.best is not None:
        from search.promote import ChampionKept, promote

        try:
            version = promote(
                client,
                opts.experiment,
                metric=opts.decision,
                objectives=opts.decision_metrics,  # acc,fid: from the Pareto front, the rule the summary used
                allow_pruned=opts.allow_pruned,
                alias="champion",
                model_name=opts.entry.model_name,
                log=_say,
            )
            _say(f"promoted: models:/{opts.entry.model_name}@champion (version {version.version})")
        except ChampionKept as kept:  # an earlier search's better champion stays: the search itself succeeded
            _say(f"not promoted: {kept} (python -m search.promote --experiment {opts.experiment} --force)")
    if summary.best is None:
        client.set_terminated(parent.run_id, status="FAILED")
        raise SearchFailed(
            f"no trial of {opts.experiment} can be chosen ({len(results)} trials: {summary.counts['FAIL']} "
            f"failed, {summary.counts['PRUNED']} pruned, {summary.counts['diverged']} diverged); the "
            f"errors are in {results.experiment_path}/trial_*/error.txt"
        )
    client.set_terminated(parent.run_id, status="FINISHED")
    _say_where(opts, parent, results)
    return 0


def _say_where(opts: Options, parent: ParentRun, results) -> None:
    from search import tracking
    from search.options import redacted

    _say(f"artifacts: Tune results and checkpoints in {results.experiment_path}")
    _say(f"artifacts: MLflow runs in {redacted(opts.tracking_uri)} (experiment {opts.experiment})")
    _say(f"open the MLflow UI: {tracking.mlflow_ui_command(opts.tracking_uri, parent.experiment_id)}")
    promote_flags = "".join(
        (f" --objectives {','.join(opts.objectives)}" if len(opts.objectives) > 1 else "",
         " --allow-pruned" if opts.allow_pruned else "")
    )  # fmt: skip
    login = " (MLFLOW_TRACKING_USERNAME/_PASSWORD set)" if "MLFLOW_TRACKING_USERNAME" in os.environ else ""
    _say(
        f"promote the best: python -m search.promote --experiment {opts.experiment}{promote_flags} "
        f"--tracking-uri {redacted(opts.tracking_uri)}{login}"
    )
