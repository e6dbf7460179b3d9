"""The search's command line, shared by every entry script; entries differ only in their `EntryDefaults`.

A value left unset on the command line is filled from the entry's budget for the machine it runs on
(`smoke` with --smoke-test, `gpu` when the Ray cluster has a GPU, else `cpu`), so `python search/clevr.py`
with no arguments is a complete, right-sized search on a laptop and a larger one on a GPU node.
`OPTIONS` is the one table of flags: argparse, --help (with each budget's value) and that fill read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from search.budget import BUDGET_NAMES, Budget, EntryDefaults
from trainers.cli import OneLineParser, int_at_least, non_negative_int, positive_int

HOME_ENV = "CGAN_SEARCH_HOME"
OBJECTIVES = {"acc": "max", "fid": "min"}  # metric -> direction; ASHA always stops on acc
# --select -> the accuracy every decision reads (ASHA's cuts, TPE's values, best.pt, promotion). "val": the
# val condition set (trainers.evaluator.protocol.VAL), so the reported acc (test sets' mean) is measured on
# label sets and images no decision saw; "test": the reported acc itself, as before (optimistic).
SELECT = {"val": "acc_val", "test": "acc"}
_EXPERIMENT = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z"
)  # a directory name and an MLflow experiment name


@dataclass(frozen=True, kw_only=True)
class Options(Budget):
    """Parsed and completed options: the budget with the command line's values filled in, and the rest.
    Every path is absolute."""

    entry: EntryDefaults
    home: Path
    data: str
    evaluator: Path | None
    gpus_per_trial: float  # with gpus_auto: 1 until the driver has measured (search/packing.py)
    cpus_per_trial: float
    max_concurrent: int | None
    storage: str
    tracking_uri: str
    experiment: str
    seed: int
    promote: bool
    allow_pruned: bool  # the best trial / --promote may be one ASHA stopped before max_epochs
    smoke_test: bool
    objectives: tuple[str, ...]
    max_failures: int
    address: str | None
    budget_name: str
    gpus_auto: bool = False  # --gpus-per-trial auto: the driver sets gpus_per_trial from a probe step
    pruned_generator: str = "none"  # what an ASHA-stopped trial keeps: none, or its last evaluation's G
    select: str = "val"  # --select: which accuracy the decisions read (SELECT)
    arm: str = "tpe-asha"  # searcher + scheduler by name (bench/search_value.py's arms; no flag)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(OBJECTIVES[o] for o in self.objectives)

    @property
    def decision(self) -> str:
        """The metric ASHA stops on and TPE, best.pt and promotion rank by: acc_val, or acc with --select test."""
        return SELECT[self.select]

    @property
    def decision_metrics(self) -> tuple[str, ...]:
        """The objectives as result keys: acc read as `decision`, fid as fid (modes: `modes`)."""
        return tuple(self.decision if o == "acc" else o for o in self.objectives)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (None means "from the budget", said in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def default_home() -> Path:
    """$CGAN_SEARCH_HOME or ~/.cgan-search: persistent and absolute, because under `ray job submit
    --working-dir` the CWD is a temporary copy that is deleted, and each trial's CWD is its trial dir."""
    return Path(os.environ.get(HOME_ENV) or "~/.cgan-search").expanduser().resolve()


def _resource(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    if 0 < value < 1 and abs(1 / value - round(1 / value)) > 1e-6:
        raise argparse.ArgumentTypeError(f"a fraction must divide 1 evenly (0.5, 0.25, ...), got {text!r}")
    return value


def _gpus(text: str) -> float | str:
    return "auto" if text.strip() == "auto" else _resource(text)


def _objectives(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in OBJECTIVES]
    if not names or bad or len(set(names)) != len(names) or names[0] != "acc":
        raise argparse.ArgumentTypeError(
            f"expected 'acc' or 'acc,fid' (acc first: ASHA stops on it), got {text!r}"
        )
    return names


def _presets(text: str) -> tuple[str, ...]:
    if text.strip() == "none":
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected preset names separated by commas, or 'none'")
    return names


def _experiment(text: str) -> str:
    if len(text) > 100:  # said apart: the character rule below would not tell why a long name fails
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r}... is {len(text)} characters long: at most 100 (it names a directory and an "
            "MLflow experiment)"
        )
    if not _EXPERIMENT.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '_', '-', '.' (it names a directory and an MLflow experiment)"
        )
    return text


def _names(value: tuple[str, ...]) -> str:
    return ",".join(value) or "none"


@dataclass(frozen=True)
class Flag:
    """One option of the search's command line. `name` is its argparse dest and its Options field (`--max-epochs`:
    max_epochs). With `budget` it is also a Budget field: left unset, the budget's value fills it, and --help
    shows each budget's value. `help` may name the entry ({entry.name}, {entry.model_name}); a callable
    `default` is given the entry."""

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    budget: bool = False
    action: str | None = None
    choices: tuple[str, ...] | None = None
    show: Callable[[Any], str] = str  # how a budget's value reads in --help

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"


# In --help order. The budgeted rows are exactly the Budget fields a user may set (tests/test_search.py).
OPTIONS = (
    Flag("space", "search space YAML: a path, or a file name under spaces/", budget=True),
    Flag(
        "data",
        "'synthetic' (render i-CLEVR once, cached), 'digits', an i-CLEVR layout folder, or a .parquet pack",
        default=lambda entry: entry.data,
    ),
    Flag("size", "training resolution", positive_int, budget=True),
    Flag(
        "evaluator",
        "judge checkpoint: the official {{'model': sd}} file, or a project one; without a sidecar of this data "
        "it is measured on the data first (cached); default: one fitted on the data once, cached under the home",
        Path,
    ),
    Flag(
        "evaluator_floor",
        "refuse an evaluator whose held-out (or, for a given one, measured) accuracy is below this",
        float,
        budget=True,
    ),
    Flag("num_samples", "trials in total", positive_int, budget=True),
    Flag("max_epochs", "epochs of a trial ASHA never stops", positive_int, budget=True),
    Flag("grace_epochs", "epochs before ASHA may stop a trial", positive_int, budget=True),
    Flag(
        "reduction_factor",
        "ASHA keeps 1/rf of the trials at each rung",
        int_at_least(2),  # ASHA asserts rf > 1: at 1 it would keep every trial at every rung
        budget=True,
    ),
    Flag(
        "gpus_per_trial",
        "GPUs per trial; a fraction such as 0.25 packs 4 trials on one GPU; 'auto' packs as many as the "
        "measured memory of one probe step of the space's largest configs allows (default: 0.25 when the "
        "cluster has GPUs, else 0)",
        _gpus,
    ),
    Flag("cpus_per_trial", "CPU cores per trial (torch threads in the trial)", _resource, default=1.0),
    Flag(
        "max_concurrent",
        "trials running at once (default: what the cluster's CPUs and GPUs hold at the per-trial sizes)",
        positive_int,
    ),
    Flag("storage", "Ray Tune storage: absolute path or URI (default: HOME/ray_results)"),
    Flag(
        "tracking_uri",
        "MLflow tracking: http://host:port of a tracking server, or a local store such as "
        "sqlite:////abs/mlflow.db (default: sqlite:///HOME/mlflow.db, artifacts in HOME/mlartifacts)",
    ),
    Flag(
        "experiment",
        "Tune experiment and MLflow experiment name; rerun with the same name to resume a killed search "
        "(default: {entry.name}-YYYYMMDD-HHMMSS, a new search)",
        _experiment,
    ),
    Flag(
        "seed",
        "seeds the TPE sampler and every trial (the cached data and judge do not depend on it)",
        int,
        default=0,
    ),
    Flag(
        "promote",
        "register the best trial's generator as '{entry.model_name}' (alias champion) at the end",
        action="store_true",
    ),
    Flag(
        "allow_pruned",
        "let the best trial line and --promote choose a trial ASHA stopped before --max-epochs (by its "
        "last evaluation); by default only trials that ran to --max-epochs without diverging are chosen",
        action="store_true",
    ),
    Flag(
        "pruned_generator",
        "what a trial ASHA stopped keeps on disk and in MLflow once it ends: none, or the generator of "
        "its last evaluation (default: last with --allow-pruned, else none; finished trials always keep "
        "their best evaluation's generator)",
        choices=("none", "last"),
    ),
    Flag(
        "smoke_test",
        "a genuinely small search (tiny data, tiny judge, smoke space): plumbing check in ~1-2 minutes",
        action="store_true",
    ),
    Flag(
        "select",
        "what every decision reads (ASHA's cuts, TPE, each trial's best generator, the best trial, "
        "--promote): 'val', the accuracy on a val condition set drawn from the training labels and "
        "disjoint from the test sets (saved with the search), or 'test', the reported test accuracy itself "
        "(then optimistic: chosen on the sets it is reported on); acc_test, acc_new_test and acc, their "
        "mean, are reported either way",
        choices=tuple(SELECT),
        default="val",
    ),
    Flag(
        "objectives",
        "'acc' or 'acc,fid' (multi-objective TPE: maximize acc, minimize FID; ASHA still stops on acc; "
        "acc is the --select one)",
        _objectives,
        default=("acc",),
    ),
    Flag(
        "max_failures",
        "retries of a trial whose worker dies (from its latest checkpoint)",
        non_negative_int,
        default=2,
    ),
    Flag(
        "presets",
        "recipes from spaces/presets/ enqueued as the first trials (warm start), comma separated, or "
        "'none'; presets the space cannot express are skipped with a note",
        _presets,
        budget=True,
        show=_names,
    ),
    Flag("address", "Ray cluster address (default: $RAY_ADDRESS, set by `ray job submit`; else a local Ray)"),
)
BUDGETED = tuple(f for f in OPTIONS if f.budget)


def _help(flag: Flag, entry: EntryDefaults) -> str:
    text = flag.help.format(entry=entry)
    if not flag.budget:
        return text
    values = " / ".join(flag.show(getattr(getattr(entry, b), flag.name)) for b in BUDGET_NAMES)
    return f"{text} (budget {'/'.join(BUDGET_NAMES)}: {values})"


def build_parser(entry: EntryDefaults, prog: str) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description=f"{entry.description} Optuna (TPE) samples each trial's recipe from a YAML space, Ray Tune "
        "runs the trials and ASHA stops the weak ones on the evaluator's accuracy, MLflow records one parent "
        "run per search and one child run per trial. Values marked 'budget' come from the cpu, gpu or smoke "
        f"budget (gpu when the Ray cluster has a GPU). Everything is kept under ${HOME_ENV} "
        "(default ~/.cgan-search).",
        formatter_class=HelpFormatter,
    )
    for flag in OPTIONS:
        if flag.action:
            kwargs: dict[str, Any] = {"action": flag.action}
        else:
            default = flag.default(entry) if callable(flag.default) else flag.default
            kwargs = {"type": flag.type, "default": default, "choices": flag.choices}
        p.add_argument(flag.flag, help=_help(flag, entry), **kwargs)
    return p


def folder_problem(path: Path, *, create: bool = False) -> str | None:
    """Why Tune could not keep its experiments in the local folder `path`. With `create` (once every other
    option passed: a refused command leaves no folder behind) it is made here, which is what proves it."""
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    above = next(p for p in path.parents if p.exists())
    if not above.is_dir():
        return f"{above} is a file, not a folder"
    if not create:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create it: {(err.strerror or str(err)).lower()}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "the folder is not writable"
    return None


def size_problem(size: int, data: str) -> str | None:
    """Why the trainers or the data cannot work at `size` pixels (checked before Ray starts, not after)."""
    from trainers.data.digits import DIGIT_SIZES
    from trainers.data.render import MIN_SIZE

    if size < 8 or size & (size - 1):  # trainers/models/generators.py: n_doublings from 4x4 up
        return "the generators need a power of two >= 8 (8, 16, 32, 64, 128)"
    if data == "synthetic" and size < MIN_SIZE:
        return f"synthetic i-CLEVR is rendered at {MIN_SIZE} pixels or more"
    if data == "digits" and size not in DIGIT_SIZES:
        return f"the digits data come at {', '.join(map(str, DIGIT_SIZES))} pixels"
    return None


def _space_path(text: str) -> Path:
    """A path as given, else a file under the installed spaces/ folder ('smoke' or 'smoke.yaml')."""
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    import spaces  # the package that holds the space files

    folder = Path(spaces.__file__).resolve().parent
    for candidate in (folder / text, folder / f"{text}.yaml"):
        if candidate.is_file():
            return candidate
    return path.resolve()


# MLflow 3.17's tracking stores by URI scheme ("+driver" suffixes such as postgresql+psycopg2 allowed).
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 5.0  # a live server accepts a TCP connect in milliseconds; MLflow and Ray retry for minutes


def tracking_uri_or_default(text: str | None, home: Path) -> str:
    """HOME's SQLite store by default; a bare path to a .db file becomes an absolute sqlite:/// URI.

    A user:password inside an http(s) URI moves to MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (where
    MLflow's REST client reads them) and the URI returned has none: MLflow prints the URI it is given in its
    "View run ... at" lines, Tune pickles it with the experiment, and the search prints it in its own lines."""
    if text is None:
        return f"sqlite:///{home / 'mlflow.db'}"
    if "://" in text:
        return _credentials_to_env(text)
    return f"sqlite:///{Path(text).expanduser().resolve()}" if text.endswith(".db") else text


def _credentials_to_env(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit(parts._replace(netloc=host))


def redacted(uri: str) -> str:
    """The URI to show: a password kept inside it (postgresql://user:pw@host/db needs it there) as ***."""
    parts = urlsplit(uri) if "://" in uri else None
    if parts is None or parts.password is None:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


def tracking_scheme_problem(uri: str) -> str | None:
    """Why MLflow cannot use `uri` as a tracking store, judged from its scheme alone (no I/O)."""
    if "://" not in uri:
        return None
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme in TRACKING_SCHEMES:
        return None
    return (
        f"unsupported scheme {scheme!r} (MLflow tracks to http(s)://host:port of a tracking server, "
        "sqlite:////abs/mlflow.db, postgresql://..., mysql://... or file:///abs/folder)"
    )


def unreachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing accepts a TCP connection at host:port, or None when something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return (err.strerror or str(err)).lower()


def tracking_unreachable(uri: str) -> str | None:
    """For an http(s) tracking URI: why its server cannot be reached (None for stores on disk)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{parts.netloc!r} has no valid port"
    if not parts.hostname:
        return "no host in it"
    why = unreachable(parts.hostname, port)
    return None if why is None else f"no MLflow server reachable at {parts.hostname}:{port} ({why})"


def ray_address_unreachable(address: str) -> str | None:
    """For a Ray address (host:port or ray://host:port; 'auto' and 'local' are not probed): why nothing
    answers there, or None."""
    if address in ("auto", "local"):
        return None
    text = address.split("://", 1)[1] if "://" in address else address
    host, _, port = text.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return "expected host:port (the head's GCS, e.g. 127.0.0.1:6379) or ray://host:port"
    why = unreachable(host.strip("[]"), int(port))
    return None if why is None else f"no Ray cluster reachable at {host}:{port} ({why})"


def relative_store(uri: str) -> bool:
    """sqlite:///x.db and file:x are relative to the working dir, which `ray job submit` deletes
    (sqlite:////abs/x.db and file:///abs are absolute)."""
    for prefix in ("sqlite:///", "file://", "file:"):
        if uri.startswith(prefix):
            return not uri[len(prefix) :].startswith("/")
    return False


def parse(
    entry: EntryDefaults, argv: list[str] | None = None, prog: str | None = None
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = build_parser(entry, prog or f"python search/{entry.name}.py")
    return parser.parse_args(argv), parser


def _budget(args: argparse.Namespace, parser: argparse.ArgumentParser, budget: Budget) -> Budget:
    """The budget with every budgeted value the command line gave; a budget's grace never exceeds the
    --max-epochs given. The space becomes an absolute path."""
    given = {f.name: getattr(args, f.name) for f in BUDGETED if getattr(args, f.name) is not None}
    filled = dataclasses.replace(budget, **given)
    if args.grace_epochs is None:
        filled = dataclasses.replace(filled, grace_epochs=min(budget.grace_epochs, filled.max_epochs))
    space = _space_path(str(filled.space))
    if not space.is_file():
        parser.error(f"--space {filled.space}: no such file (a path, or a name under spaces/)")
    return dataclasses.replace(filled, space=space)


def _storage(text: str | None, home: Path, parser: argparse.ArgumentParser) -> str:
    storage = text or str(home / "ray_results")
    if "://" in storage:
        return storage
    if not os.path.isabs(os.path.expanduser(storage)):
        parser.error(
            f"--storage {storage}: must be an absolute path or a URI (trials run in other directories)"
        )
    storage = str(Path(storage).expanduser())
    if problem := folder_problem(Path(storage)):
        parser.error(f"--storage {storage}: {problem}")
    return storage


def _data(text: str, parser: argparse.ArgumentParser) -> str:
    if text in ("synthetic", "digits"):
        return text
    path = Path(text).expanduser()
    if not path.exists():
        parser.error(f"--data {text}: no such folder or file (or use 'synthetic' / 'digits')")
    return str(path.resolve())


def _gpus_per_trial(given: float | str | None, cluster_gpus: float | None, parser) -> tuple[float, bool]:
    """(GPUs per trial, auto). `cluster_gpus` None: not known yet, so not checked against the cluster."""
    no_gpu = cluster_gpus is not None and cluster_gpus <= 0
    if given == "auto":
        if no_gpu:
            parser.error(
                "--gpus-per-trial auto: the Ray cluster has no GPU to measure a probe step on "
                "(give a number, e.g. 0 for CPU trials)"
            )
        return 1.0, True  # one trial per GPU until the driver's probe has measured (search/packing.py)
    gpus = given if given is not None else (0.25 if cluster_gpus else 0.0)
    if gpus > 0 and no_gpu:
        parser.error(f"--gpus-per-trial {gpus:g}: the Ray cluster has no GPU")
    return gpus, False


def _tracking(text: str | None, home: Path, parser: argparse.ArgumentParser) -> str:
    tracking = tracking_uri_or_default(text, home)
    if problem := tracking_scheme_problem(tracking):
        parser.error(f"--tracking-uri {redacted(tracking)}: {problem}")
    if relative_store(tracking):
        parser.error(
            f"--tracking-uri {tracking}: a relative path; use an absolute one (sqlite:////abs/mlflow.db)"
        )
    return tracking


def _for_cluster(args, parser, entry: EntryDefaults, data: str, cluster_gpus: float | None) -> dict[str, Any]:
    """What depends on the cluster: the budget (smoke with --smoke-test, gpu when the cluster has a GPU, else
    cpu) with the command line's values in it, and the GPUs per trial; checked. `cluster_gpus` None: not known
    yet (before Ray starts), so GPU availability is not checked."""
    budget_name = "smoke" if args.smoke_test else "gpu" if cluster_gpus else "cpu"
    budget = _budget(args, parser, getattr(entry, budget_name))
    gpus, auto = _gpus_per_trial(args.gpus_per_trial, cluster_gpus, parser)
    if problem := size_problem(budget.size, data):
        parser.error(f"--size {budget.size}: {problem}")
    if gpus > 1 and gpus != int(gpus):
        parser.error(f"--gpus-per-trial {gpus:g}: more than one GPU must be a whole number")
    if budget.grace_epochs > budget.max_epochs:
        parser.error(f"--grace-epochs {budget.grace_epochs} is more than --max-epochs {budget.max_epochs}")
    if not 0 <= budget.evaluator_floor <= 1:
        parser.error(f"--evaluator-floor {budget.evaluator_floor}: expected a number in [0, 1]")
    fields = {f.name: getattr(budget, f.name) for f in dataclasses.fields(Budget)}
    return {**fields, "budget_name": budget_name, "gpus_per_trial": gpus, "gpus_auto": auto}


def complete(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    entry: EntryDefaults,
    *,
    cluster_gpus: float | None = None,
) -> Options:
    """Fill what the command line left unset from the right budget and check what argparse cannot; a bad
    value ends here, in one line (exit 2).

    The driver calls it once, before Ray starts (`cluster_gpus` None: everything but GPU availability is
    checked), and `for_cluster` once Ray is up."""
    home = default_home()
    evaluator = args.evaluator.expanduser().resolve() if args.evaluator else None
    if evaluator is not None and not evaluator.is_file():
        parser.error(f"--evaluator {args.evaluator}: no such file")
    storage = _storage(args.storage, home, parser)
    data = _data(args.data, parser)
    if args.cpus_per_trial <= 0:
        parser.error("--cpus-per-trial must be > 0")
    tracking = _tracking(args.tracking_uri, home, parser)
    as_given = ("cpus_per_trial", "max_concurrent", "seed", "promote", "allow_pruned", "smoke_test")
    as_given += ("objectives", "max_failures", "address", "select")
    return Options(
        **_for_cluster(args, parser, entry, data, cluster_gpus),
        **{name: getattr(args, name) for name in as_given},
        entry=entry,
        home=home,
        data=data,
        evaluator=evaluator,
        storage=storage,
        tracking_uri=tracking,
        experiment=args.experiment or f"{entry.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        pruned_generator=args.pruned_generator or ("last" if args.allow_pruned else "none"),
    )


def for_cluster(opts: Options, args: argparse.Namespace, parser, cluster_gpus: float) -> Options:
    """The completed options for the Ray cluster the driver joined: its budget and GPU checks (the gpu budget
    when it has a GPU). Everything else was completed and checked before Ray started."""
    return dataclasses.replace(opts, **_for_cluster(args, parser, opts.entry, opts.data, cluster_gpus))
