"""Every bad input at every command line: one clear line on stderr naming the file, key or value, a non-zero
exit, no traceback, within seconds, and nothing an earlier run wrote is lost.

HOW TO ADD A CASE: append a `Row` to `ROWS` (one row per bad input; keep the table sorted by CLI):

    Row("promote-unreachable",                      # test id: <cli>-<what is wrong>
        ["-m", "search.promote", "--experiment", "x", "--tracking-uri", "http://127.0.0.1:9"],
        2,                                          # expected exit code
        "http://127.0.0.1:9",                       # the one stderr line must contain this fragment
        within=20)                                  # optional: seconds the refusal may take at most

`argv` is what follows `python`: "-m module ..." or a script path relative to the repository root. Text in
argv may use {tmp} (this row's own empty folder, the working directory of the command) and {home} (the shared
`World` below). `setup(tmp)` writes the files the row needs (a bad space, a corrupt checkpoint) into {tmp}.

Every row runs with CGAN_SEARCH_HOME and CGAN_SEARCH_CACHE pointing at one `World`: a home that already
holds an earlier search's MLflow store (a finished run with a metric, a registered model version with an
alias) and cache files. After every row the test checks that all of that is still there, unchanged: a refused
or interrupted command never loses what was already written. A row whose command is *meant* to add to the
store (an interrupted search records its parent run) still may not change anything that was there before.

`lone=True` (the default): stderr is exactly that one line. Commands that start Ray before they can fail
(an interrupted search) set `lone=False`: then the one line must be stderr's last line, and the only line
carrying the fragment. `interrupt_on`: send SIGINT (Ctrl-C) once stdout or stderr shows this text, or once this
predicate on the world holds. `check(world, tmp, out)` adds the row's own assertions (for example the parent
run is KILLED).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_search_support import ROOT, children_of, kill_pids


@dataclass(frozen=True)
class World:
    """The shared home every row runs against, and what must survive every row."""

    home: Path
    cache: Path
    tracking_uri: str
    run_id: str  # a finished run of an earlier search
    model_name: str  # its registered model (version 1, alias champion)


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]
    code: int
    fragment: str
    within: float = (
        60.0  # seconds from start to exit; Python, torch and MLflow imports alone take ~5-10 s here
    )
    setup: Callable[[Path], None] | None = None
    lone: bool = True
    interrupt_on: str | Callable[[World], bool] | None = None
    check: Callable[[World, Path, subprocess.CompletedProcess], None] | None = None
    slow: bool = False  # more than ~20 s (starts Ray, or waits for a trial)
    env: dict[str, str] = field(default_factory=dict)


def _time_to_interrupt(row: Row, world: World, out_path: Path, err_path: Path) -> bool:
    if callable(row.interrupt_on):
        return row.interrupt_on(world)
    return row.interrupt_on in out_path.read_text() + err_path.read_text()


def _run(row: Row, world: World, tmp: Path) -> subprocess.CompletedProcess:
    """The row's command as a user runs it (from its own folder, not the repository), with its timing."""
    subst = {"tmp": str(tmp), "home": str(world.home), "root": str(ROOT)}
    argv = [a.format(**subst) for a in row.argv]
    if argv[0].endswith(".py") and not os.path.isabs(argv[0]):
        argv[0] = str(ROOT / argv[0])
    env = {
        **os.environ,
        "CGAN_SEARCH_HOME": str(world.home),
        "CGAN_SEARCH_CACHE": str(world.cache),
        "RAY_AUTH_MODE": "token",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        **row.env,
    }
    env.pop("RAY_ADDRESS", None)  # never a cluster the developer happens to run
    cmd = [sys.executable, *argv]
    out_path, err_path = tmp / "stdout.txt", tmp / "stderr.txt"
    start = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=err, start_new_session=True)
        spawned: set[int] = set()
        try:
            deadline = start + row.within + 30  # past `within` the row fails anyway; this only stops a hang
            interrupted = False
            while proc.poll() is None and time.monotonic() < deadline:
                spawned.update(children_of(proc.pid))
                if (
                    row.interrupt_on
                    and not interrupted
                    and _time_to_interrupt(row, world, out_path, err_path)
                ):
                    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: a terminal signals its whole process group
                    interrupted = True
                time.sleep(0.2)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
        finally:
            spawned.update(children_of(proc.pid))
            kill_pids([p for p in spawned if p != proc.pid])  # a Ray it left behind: only what it spawned
    elapsed = time.monotonic() - start
    result = subprocess.CompletedProcess(cmd, proc.returncode, out_path.read_text(), err_path.read_text())
    result.elapsed = elapsed  # type: ignore[attr-defined]
    if row.interrupt_on:
        when = (
            row.interrupt_on.__name__
            if callable(row.interrupt_on)
            else f"the output showing {row.interrupt_on!r}"
        )
        assert interrupted, f"no Ctrl-C sent: never {when}: {result.stdout[-2000:]}"
    return result


def command_of(row: Row) -> str:
    """The command a row runs: the script path or the module after -m."""
    return row.argv[1] if row.argv[0] == "-m" else row.argv[0]


def prog_of(row: Row) -> str:
    """How the command names itself in its one line (trainers.cli: OneLineParser and run_command)."""
    return f"python -m {row.argv[1]}" if row.argv[0] == "-m" else f"python {row.argv[0]}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WORKER = re.compile(r"^\((\w+) pid=(\d+)\)")  # Ray's prefix on a worker's forwarded output


def ours(text: str) -> str:
    """The output less Ray's worker-teardown noise: Ray stops an idle worker with SIGTERM, its handler raises
    SystemExit wherever the worker is, and inside a garbage-collection callback Python can only print it
    ("Exception ignored", with a traceback ending in ray's sigterm_handler), which Ray forwards to the driver.
    Dropped: every forwarded line of a worker whose output shows that handler; any other traceback stays.
    The search's workers drop that report themselves now (search/worker_setup.py, tests/test_worker_setup.py);
    this stays for a worker stopped before its setup hook has run."""
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    teardown = {m.group(2) for line in lines if (m := _WORKER.match(line)) and "sigterm_handler" in line}
    return "\n".join(line for line in lines if not ((m := _WORKER.match(line)) and m.group(2) in teardown))


def assert_one_line(row: Row, out: subprocess.CompletedProcess) -> None:
    """The contract of a refusal: exit code, one line with the fragment, no traceback, in time."""
    both = ours(out.stdout + out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    shown = f"exit {out.returncode}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    assert "Traceback" not in both, shown
    assert out.returncode == row.code, shown
    assert lines, shown
    assert row.fragment in lines[-1], shown
    assert lines[-1].startswith(f"{prog_of(row)}"), shown  # the one convention: "PROG: error: ..."
    if row.lone:
        assert len(lines) == 1, shown
    else:
        assert sum(row.fragment in line for line in lines) == 1, shown
    assert out.elapsed <= row.within, f"took {out.elapsed:.1f} s (> {row.within} s)\n{shown}"  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the world every row must leave intact


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix not in (".db", ".db-journal", ".lock")  # the store is checked by content
    }


def _store_state(world: World) -> dict:
    """What the earlier search left in MLflow: its run (status, metrics, params, tags) and its model version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(world.tracking_uri)
    run = client.get_run(world.run_id)
    version = client.get_model_version_by_alias(world.model_name, "champion")
    return {
        "run": (run.info.status, run.data.metrics, run.data.params, run.data.tags),
        "version": (version.version, version.run_id, version.source, version.tags),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """A home with an earlier search in it: a real SQLite MLflow store with a finished run and a registered
    version, the artifacts beside it, and cache files (what a user's ~/.cgan-search holds after one search)."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("bad-inputs-home")
    cache = home / "cache"
    (cache / "packs").mkdir(parents=True)
    (cache / "packs" / "earlier.parquet").write_bytes(os.urandom(4096))
    (home / "evaluators").mkdir()
    (home / "evaluators" / "earlier.pt").write_bytes(os.urandom(4096))
    (home / "ray_results" / "earlier").mkdir(parents=True)
    (home / "ray_results" / "earlier" / "experiment_state.json").write_text("{}")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("earlier", artifact_location=(home / "mlartifacts" / "earlier").as_uri())
    run = client.create_run(exp, run_name="search-earlier", tags={"search.role": "search"})
    client.log_metric(run.info.run_id, "acc", 0.5)
    client.log_param(run.info.run_id, "seed", "0")
    artifact = home / "earlier.txt"
    artifact.write_text("an artifact of the earlier search\n")
    client.log_artifact(run.info.run_id, str(artifact))
    artifact.unlink()
    client.set_terminated(run.info.run_id, status="FINISHED")
    name = "earlier-cgan"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/earlier.txt", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    return World(home=home, cache=cache, tracking_uri=uri, run_id=run.info.run_id, model_name=name)


# ---------------------------------------------------------------- rows: search entry scripts (search/*.py)

SEARCH = "search/clevr.py"
SMOKE_SPACE = ROOT / "spaces" / "smoke.yaml"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def space_file(name: str, edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """A `setup` writing {tmp}/name: the smoke space's lines after `edit`. It parses, but what it samples
    is not a valid trainer config."""

    def setup(tmp: Path) -> None:
        (tmp / name).write_text("\n".join(edit(SMOKE_SPACE.read_text().splitlines())) + "\n")

    return setup


def _set(key: str, value: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [f"  {key}: {value}" if line.startswith(f"  {key}:") else line for line in lines]


def _drop(*keys: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [line for line in lines if not line.startswith(tuple(f"  {k}:" for k in keys))]


def _add(key: str, value: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines, f"  {key}: {value}"]


# Two trials, both running when Ctrl-C lands: Tune's cleanup then marks them TERMINATED, and counting
# trials alone took the search for finished (exit 1) until search/driver.sigint_caught_by_tune.
CTRL_C = [SEARCH, "--smoke-test", "--num-samples", "2", "--max-concurrent", "2", "--max-epochs", "2",
          "--experiment", "badinput-ctrlc"]  # fmt: skip


def _both_trials_running(world: World) -> bool:
    """Both of CTRL_C's trials have reported an epoch and one has another to go. Not Tune's status table: it
    comes every 30 s, and on CI's machine both trials ran and ended between two of them."""
    from tests.test_search_support import tune_trials

    try:
        epochs = [len(r) for r in tune_trials(world.home / "ray_results" / "badinput-ctrlc").values()]
    except ValueError:  # a result line being written
        return False
    return len(epochs) == 2 and min(epochs) == 1


def _killed_then_resumed(world: World, tmp: Path, out: subprocess.CompletedProcess) -> None:
    """After Ctrl-C the parent run is KILLED and no promote hint was printed; the same command then resumes
    the search to its end, in the same parent run, with exactly one child run per trial."""
    from mlflow.tracking import MlflowClient

    from tests.test_search_support import tune_trials

    client = MlflowClient(world.tracking_uri)
    exp = client.get_experiment_by_name("badinput-ctrlc")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`search.role` = 'search'")
    assert [r.info.status for r in parents] == ["KILLED"]
    assert "promote the best" not in out.stdout
    before = set(tune_trials(world.home / "ray_results" / "badinput-ctrlc"))
    assert len(before) == 2  # both had started

    # a rerun that would change the plan is refused, naming the flag (Tuner.restore would run the old one)
    other = tmp / "other"
    other.mkdir()
    changed = [*CTRL_C[:3], "3", *CTRL_C[4:]]  # --num-samples 3
    refused = _run(Row("search-ctrl-c-changed", changed, 2, "", within=240), world, other)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert (
        "--experiment badinput-ctrlc: that search exists and ran with --num-samples 2, this command 3; "
        "rerun its own command to resume it" in refused.stderr
    )
    assert set(tune_trials(world.home / "ray_results" / "badinput-ctrlc")) == before  # nothing touched
    again = tmp / "again"
    again.mkdir()
    rerun = _run(Row("search-ctrl-c-rerun", CTRL_C, 0, "", within=300), world, again)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout and "Traceback" not in ours(rerun.stdout + rerun.stderr)
    trials = tune_trials(world.home / "ray_results" / "badinput-ctrlc")
    assert len(trials) == 2 and before == set(trials)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs if r.data.tags.get("search.role") == "search"] == [
        parents[0].info.run_id
    ]
    children = [r for r in runs if r.data.tags.get("search.role") == "trial"]
    assert sorted(r.data.tags["ray.trial_id"] for r in children) == sorted(trials)  # one run per trial
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"


ROWS: list[Row] = [
    # --- search entry scripts: refused by argparse / options.complete, before anything heavy
    Row(
        "search-reduction-factor-1",
        [SEARCH, "--smoke-test", "--reduction-factor", "1"],
        2,
        "--reduction-factor: expected an integer >= 2, got '1'",
    ),
    Row(
        "search-select-unknown",
        [SEARCH, "--smoke-test", "--select", "best"],
        2,
        "--select: invalid choice: 'best' (choose from 'val', 'test')",
    ),
    Row(
        "search-experiment-too-long",
        [SEARCH, "--smoke-test", "--experiment", "x" * 300],
        2,
        "300 characters long: at most 100",
    ),
    Row(
        "search-size-not-a-power-of-two",
        [SEARCH, "--smoke-test", "--size", "13"],
        2,
        "--size 13: the generators need a power of two",
        within=30,
    ),
    Row(
        "search-size-below-the-renderer",
        [SEARCH, "--smoke-test", "--size", "8", "--experiment", "earlier"],  # the earlier search's own name
        2,
        "--size 8: synthetic i-CLEVR is rendered at 16 pixels or more",
        within=30,
    ),
    Row(
        "search-storage-in-proc",
        [SEARCH, "--smoke-test", "--storage", "/proc/x"],
        2,
        "--storage /proc/x: cannot create it",
    ),
    Row(
        "search-storage-is-a-file",
        [SEARCH, "--smoke-test", "--storage", "{tmp}/a-file"],
        2,
        "/a-file: exists and is not a folder",
        setup=lambda tmp: (tmp / "a-file").write_text("not a folder\n"),
    ),
    Row(
        "search-tracking-uri-ftp",
        [SEARCH, "--smoke-test", "--tracking-uri", "ftp://example.com/mlflow"],
        2,
        "--tracking-uri ftp://example.com/mlflow: unsupported scheme 'ftp'",
    ),
    # --- search: refused before Ray starts (reachability probes, the space's sampled configs)
    Row(
        "search-tracking-server-unreachable",
        [SEARCH, "--smoke-test", "--tracking-uri", UNREACHABLE],
        2,
        f"--tracking-uri {UNREACHABLE}: no MLflow server reachable at 127.0.0.1:9",
        within=30,
    ),
    Row(
        "search-ray-address-unreachable",
        [SEARCH, "--smoke-test", "--address", "127.0.0.1:9"],
        2,
        "--address 127.0.0.1:9: no Ray cluster reachable at 127.0.0.1:9",
        within=30,
    ),
    Row(
        "search-space-n-critic-0",
        [SEARCH, "--smoke-test", "--space", "{tmp}/n_critic0.yaml"],
        2,
        "n_critic0.yaml: sample seed 0: TrainConfig rejected it: n_critic = 0 is out of range",
        setup=space_file("n_critic0.yaml", _set("n_critic", "0")),
        within=30,
    ),
    Row(
        "search-space-unknown-key",
        [SEARCH, "--smoke-test", "--space", "{tmp}/unknown.yaml"],
        2,
        "key 'n_critics' (value 5) is not a TrainConfig field",
        setup=space_file("unknown.yaml", _add("n_critics", "5")),
        within=30,
    ),
    Row(
        "search-space-missing-key",
        [SEARCH, "--smoke-test", "--space", "{tmp}/missing.yaml"],
        2,
        "missing required config key(s): d_cond",
        setup=space_file("missing.yaml", _drop("d_cond", "embed_dim")),
        within=30,
    ),
    Row(
        "digits-size-not-a-digits-size",  # the other entry script: the same driver, its own defaults
        ["search/digits.py", "--smoke-test", "--size", "128"],
        2,
        "--size 128: the digits data come at 8, 16, 32, 64 pixels",
    ),
    # --- search: Ctrl-C once both trials run. Exit 130, the resume hint last, the parent run KILLED;
    # then the same command resumes it (the row's check).
    Row(
        "search-ctrl-c",
        CTRL_C,
        130,
        "interrupted: rerun the same command with --experiment badinput-ctrlc to resume",
        interrupt_on=_both_trials_running,
        lone=False,  # Ray and Tune log on stderr before the search ends
        check=_killed_then_resumed,
        slow=True,
        within=240,
    ),
    # --- search.promote
    Row(
        "promote-tracking-server-unreachable",
        ["-m", "search.promote", "--experiment", "earlier", "--tracking-uri", UNREACHABLE],
        2,
        f"--tracking-uri {UNREACHABLE}: no MLflow server reachable at 127.0.0.1:9",
        within=30,
    ),
]


# ---------------------------------------------------------------- rows: trainers, data, evaluator, spaces, generate
# Setups below write real files: trainer checkpoints from a freshly built GAN, a pyfunc generator model,
# i-CLEVR folders. `_unchanged(*names)` is the "nothing lost" check of a row: the files its setup wrote
# (an earlier run's checkpoint, an earlier grid) have the same bytes after the refusal.

TRAIN_BASE = ["-m", "trainers.train", "--preset", "dcgan_nonsat", "--data", "digits"]
TRAIN = [*TRAIN_BASE, "--size", "16", "--epochs", "2"]


def _generate(labels: str = "test", out: str = "{tmp}/grid.png", model: str = "{tmp}/model") -> list[str]:
    return ["-m", "search.generate", "--labels", labels, "--out", out, "--model", model]


EARLIER_GRID = b"an earlier grid: a refused generate must not touch it\n"


def _trainer_checkpoint(path: Path, *, width: int = 4) -> None:
    """A real checkpoint of `TRAIN` with --set width=WIDTH (a freshly built GAN, as trainers.train saves it)."""
    import torch

    from trainers.checkpoint import make_checkpoint, save_checkpoint
    from trainers.config import load_preset
    from trainers.step import build_gan

    gan = build_gan(
        load_preset("dcgan_nonsat").replace(width=width), image_size=16, n_classes=10, device="cpu"
    )
    info = {"image_size": 16, "n_classes": 10, "classes": [str(i) for i in range(10)], "fingerprint": "x"}
    state = make_checkpoint(gan, epoch=1, data_generator=torch.Generator(), data_info=info)
    save_checkpoint({**state, "best_acc": 0.0}, path)


def _earlier_run(tmp: Path) -> None:
    _trainer_checkpoint(tmp / "run" / "last.pt")


def _write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        data = content if isinstance(content, bytes) else content.encode()
        (tmp / name).write_bytes(data)

    return setup


def _torch_file(name: str, obj_factory: Callable[[], object]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        import torch

        torch.save(obj_factory(), tmp / name)

    return setup


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


_HASHES: dict[tuple[str, str], str] = {}  # (tmp, name) -> sha256 when the row's setup finished


def _remember(*names: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for name in names:
            _HASHES[(str(tmp), name)] = hashlib.sha256((tmp / name).read_bytes()).hexdigest()

    return setup


def _unchanged(*names: str) -> Callable[[World, Path, subprocess.CompletedProcess], None]:
    def check(world: World, tmp: Path, out: subprocess.CompletedProcess) -> None:
        for name in names:
            assert hashlib.sha256((tmp / name).read_bytes()).hexdigest() == _HASHES[(str(tmp), name)], name

    return check


def _evaluator_file():
    import torch

    return {"model": {"conv1.weight": torch.zeros(4, 3, 7, 7)}}


def _iclevr(tmp: Path, **files: bytes | str) -> None:
    """A valid tiny i-CLEVR folder {tmp}/ds (tests/conftest.py), then `files` written over it."""
    from tests.conftest import make_iclevr_folder

    root = make_iclevr_folder(tmp / "ds")
    for name, content in files.items():
        _write(name.replace("__", "/"), content)(root)


def _float_image(tmp: Path) -> None:
    from PIL import Image

    _iclevr(tmp)
    Image.new("F", (40, 30), 0.5).save(tmp / "ds" / "images" / "CLEVR_train_000000_0.png", format="TIFF")


_GENERATOR_MODEL: list[Path] = []  # built once per session: a pyfunc save costs seconds


def _generator_model(tmp: Path) -> None:
    """{tmp}/model: a real cgan-search pyfunc generator (24 i-CLEVR classes, 8x8, untrained)."""
    import atexit
    import shutil
    import tempfile

    if not _GENERATOR_MODEL:
        import mlflow
        import torch

        from search.pyfunc import GeneratorModel, example_input
        from trainers.checkpoint import load_generator, make_checkpoint, save_checkpoint, save_generator
        from trainers.config import TrainConfig
        from trainers.data.labels import load_vocab, spec_file
        from trainers.step import build_gan

        folder = Path(tempfile.mkdtemp(prefix="bad-inputs-generator-"))
        # built once per session and shared by the rows; removed when pytest exits (it was left in /tmp)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        classes = list(load_vocab(spec_file("objects.json")))
        config = TrainConfig.from_dict(
            {"arch": "dcgan", "loss": "hinge", "g_cond": "concat", "d_cond": "projection"}
            | {"d_norm": "spectral", "width": 4, "z_dim": 8, "batch_size": 4}
        )
        gan = build_gan(config, image_size=8, n_classes=len(classes), device="cpu")
        info = {"image_size": 8, "n_classes": len(classes), "classes": classes, "fingerprint": "x"}
        state = make_checkpoint(gan, epoch=1, data_generator=torch.Generator(), data_info=info)
        save_generator(save_checkpoint(state, folder / "last.pt"), folder / "generator.pt")
        model = GeneratorModel().use(*load_generator(folder / "generator.pt"))
        example = example_input(classes)
        signature = mlflow.models.infer_signature(example, model.predict(None, example), params={"seed": 0})
        mlflow.pyfunc.save_model(
            str(folder / "model"),
            python_model=GeneratorModel(),
            artifacts={"generator": str(folder / "generator.pt")},
            signature=signature,
            pip_requirements=["torch"],  # given: inferring them imports the model in a subprocess
        )
        _GENERATOR_MODEL.append(folder / "model")
    shutil.copytree(_GENERATOR_MODEL[0], tmp / "model")


def _truncated_image(tmp: Path) -> None:
    _iclevr(tmp)
    path = tmp / "ds" / "images" / "CLEVR_train_000001_1.png"
    path.write_bytes(path.read_bytes()[:200])


ROWS += [
    # --- trainers.train: --resume of what is not this run's checkpoint; the file is left as it was
    Row(
        "train-resume-corrupt-file",
        [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/run/last.pt"],
        2,
        "run/last.pt: not a readable torch checkpoint (truncated or corrupt)",
        setup=_both(_write("run/last.pt", b"\x00 not a checkpoint " * 64), _remember("run/last.pt")),
        check=_unchanged("run/last.pt"),
    ),
    Row(
        "train-resume-evaluator-file",
        [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/evaluator.pt"],
        2,
        'evaluator.pt: an evaluator checkpoint ({"model": state_dict}), not a trainer checkpoint',
        setup=_torch_file("evaluator.pt", _evaluator_file),
    ),
    Row(
        "train-resume-foreign-dict",
        [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/weights.pt"],
        2,
        "weights.pt: a dict with keys 'w', not a trainer checkpoint",
        setup=_torch_file("weights.pt", lambda: {"w": __import__("torch").zeros(3)}),
    ),
    Row(
        "train-resume-missing-file",
        [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/run/last.pt"],
        2,
        "run/last.pt: checkpoint file not found",
    ),
    Row(
        "train-resume-config-mismatch",
        [*TRAIN, "--set", "width=8", "--out", "{tmp}/run", "--resume", "{tmp}/run/last.pt"],
        2,
        "checkpoint config differs in width (width 4 there, 8 here)",
        setup=_both(_earlier_run, _remember("run/last.pt")),
        check=_unchanged("run/last.pt"),
    ),
    Row(
        "train-fresh-run-over-an-earlier-one",
        [*TRAIN, "--set", "width=4", "--out", "{tmp}/run"],
        2,
        "run already holds a run (last.pt): continue it with --resume",
        setup=_both(_earlier_run, _remember("run/last.pt")),
        check=_unchanged("run/last.pt"),
    ),
    Row("train-set-bad-yaml", [*TRAIN, "--set", "lr=[1"], 2, "--set 'lr=[1': the value is not valid YAML"),
    Row(
        "train-size-not-a-power-of-two",
        [*TRAIN_BASE, "--epochs", "1", "--size", "13"],
        2,
        "--size: expected a power of two >= 8 (8, 16, 32, 64, 128), got '13'",
    ),
    Row(
        "train-truncated-image-in-the-data",  # the world's cache files are checked intact after it, as always
        [*TRAIN_BASE[:-1], "{tmp}/ds", "--size", "16", "--epochs", "1"],
        2,
        "CLEVR_train_000001_1.png: corrupt or truncated image",
        setup=_truncated_image,
    ),
    # --- trainers.data: what check used to call "all valid"
    Row(
        "data-check-unknown-label-in-test-json",
        ["-m", "trainers.data", "check", "{tmp}/ds"],
        2,
        "ds/test.json: entry 0: unknown label 'pink cube' (not in objects.json)",
        setup=lambda tmp: _iclevr(tmp, **{"test.json": '[["pink cube"]]'}),
    ),
    Row(
        "data-check-float-image",
        ["-m", "trainers.data", "check", "{tmp}/ds"],
        2,
        "CLEVR_train_000000_0.png: image mode 'F' is not accepted",
        setup=_float_image,
    ),
    # --- trainers.evaluator: refused before the fit, not after it
    Row(
        "evaluator-fit-out-is-a-folder",
        ["-m", "trainers.evaluator", "fit", "--data", "digits", "--out", "{tmp}"],
        2,
        ": is a folder; give a file name inside it",
    ),
    # --- spaces
    Row(
        "spaces-check-unknown-key",  # a SpaceError through run_command, not argparse
        ["-m", "spaces", "check", "{tmp}/unknown.yaml", "--samples", "5"],
        2,
        "key 'n_critics' (value 5) is not a TrainConfig field",
        setup=space_file("unknown.yaml", _add("n_critics", "5")),
    ),
    Row(
        "spaces-check-zero-samples",
        ["-m", "spaces", "check", str(SMOKE_SPACE), "--samples", "0"],
        2,
        "--samples: expected an integer >= 1, got '0'",
    ),
    # --- search.generate: nothing written on a refusal (an earlier grid keeps its bytes)
    Row(
        "generate-empty-label-set",
        _generate("{tmp}/labels.json"),
        2,
        "entry 1 is an empty label set [] (it would ask for an unconditioned image)",
        setup=_both(
            _write("labels.json", '[["red cube"], []]'),
            _write("grid.png", EARLIER_GRID),
            _remember("grid.png"),
        ),
        check=_unchanged("grid.png"),
    ),
    Row(
        "generate-unknown-label",
        _generate("{tmp}/labels.json"),
        2,
        "entry 0: unknown label 'pink cube': the model ",
        setup=_both(
            _generator_model,
            _write("labels.json", '[["pink cube"]]'),
            _write("grid.png", EARLIER_GRID),
            _remember("grid.png"),
        ),
        check=_unchanged("grid.png"),
    ),
    Row(
        "generate-malformed-labels",
        _generate("{tmp}/labels.json"),
        2,
        "labels.json: invalid JSON at line 1",
        setup=_write("labels.json", '[["red cube"'),
    ),
    Row(
        "generate-out-below-a-file",
        _generate(out="{tmp}/a-file/grid.png", model="models:/earlier-cgan@champion"),
        2,
        "a-file is a file, not a folder",
        setup=_write("a-file", "not a folder\n"),
    ),
    Row(
        "generate-model-is-a-checkpoint",
        _generate(model="{tmp}/run/last.pt"),
        2,
        "run/last.pt: a file, not an MLflow model",
        setup=_earlier_run,
    ),
    Row(
        "generate-model-not-a-generator",
        _generate(model="models:/earlier-cgan@champion"),
        2,
        "--model models:/earlier-cgan@champion: not an MLflow model (no MLmodel file in it)",
    ),
    # --- search.promote: argument errors, before a version is registered
    Row(
        "promote-reserved-alias",
        ["-m", "search.promote", "--experiment", "earlier", "--alias", "latest"],
        2,
        "--alias: 'latest': an alias is 1-255 letters, digits, _ or - ('latest' and v<N> are reserved)",
    ),
]


@pytest.mark.parametrize(
    "row", [pytest.param(r, id=r.id, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS]
)
def test_bad_input_is_one_line(row: Row, world: World, tmp_path: Path):
    files, store = _file_hashes(world.home), _store_state(world)
    if row.setup:
        row.setup(tmp_path)
    out = _run(row, world, tmp_path)
    assert_one_line(row, out)
    if row.check:
        row.check(world, tmp_path, out)
    after = _file_hashes(world.home)
    assert {k: after.get(k) for k in files} == files, "a file written before this command was lost or changed"
    assert _store_state(world) == store, "the earlier search's MLflow run or model version changed"


def test_rows_are_unique():
    assert len({r.id for r in ROWS}) == len(ROWS)


# Every command of the project (README, docs/search.md "Exit codes"): each has rows in the table.
COMMANDS = (
    "search/clevr.py", "search/digits.py", "search.promote", "search.generate", "trainers.train",
    "trainers.evaluator", "trainers.data", "spaces",
)  # fmt: skip


def test_the_table_covers_every_command_with_its_fixed_exit_codes():
    """All commands end the same way (trainers.cli.run_command): a row per command at least, and every
    row's exit code one of the fixed codes, as documented."""
    from trainers import cli

    assert {command_of(r) for r in ROWS} == set(COMMANDS)
    assert {r.code for r in ROWS if r.interrupt_on} == {cli.EXIT_INTERRUPTED}
    assert {r.code for r in ROWS if not r.interrupt_on} == {cli.EXIT_BAD_INPUT}
    docs = (ROOT / "docs" / "search.md").read_text()
    for name in ("EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_INTERRUPTED"):
        assert f"| {getattr(cli, name)} | `{name}` |" in docs, name


def test_a_sampled_config_the_trainer_refuses_stops_the_searcher(tmp_path):
    """The safety net behind the 200-sample check: the searcher's define-by-run function refuses a config
    the trainer rejects before any trial runs it (Tune would retry the trial --max-failures times), naming
    the Optuna trial, the key and the value; an enqueued preset (checked when loaded) passes as it is."""
    import optuna

    from search.driver import CheckedSpace
    from search.optuna_bridge import PRESET_ATTR
    from spaces import SpaceError, load_space

    space_file("n_critic0.yaml", _set("n_critic", "0"))(tmp_path)
    checked = CheckedSpace(load_space(tmp_path / "n_critic0.yaml"))
    study = optuna.create_study()
    with pytest.raises(SpaceError, match=r"n_critic0.yaml: Optuna trial 0: .*n_critic = 0 is out of range"):
        checked(study.ask())
    study.enqueue_trial({}, user_attrs={PRESET_ATTR: "a-preset"})
    assert checked(study.ask())["n_critic"] == 0


def test_only_rays_worker_teardown_noise_is_dropped_from_the_output():
    # as the 2026-12-02 CI run printed it: a worker stopped with SIGTERM inside a GC callback; the driver's
    # own traceback, and another worker's, stay
    teardown = [
        "\x1b[36m(run_trial pid=11577)\x1b[0m Exception ignored in: <function WeakSet.__init__.<locals>._remove>",
        "\x1b[36m(run_trial pid=11577)\x1b[0m Traceback (most recent call last):",
        '\x1b[36m(run_trial pid=11577)\x1b[0m   File "ray/_private/worker.py", line 1063, in sigterm_handler',
        "\x1b[36m(run_trial pid=11577)\x1b[0m SystemExit: 1",
    ]
    assert "Traceback" not in ours("\n".join(["[search] resuming", *teardown, "[search] done"]))
    other = "\x1b[36m(run_trial pid=11600)\x1b[0m Traceback (most recent call last):"
    assert "Traceback" in ours("\n".join([*teardown, other]))
    assert "Traceback" in ours("\n".join([*teardown, "Traceback (most recent call last):"]))
