"""The Tune trial: build, restore, train with a report per evaluation, report divergence as acc 0.

Everything a trial needs arrives through `tune.with_parameters` (stored once in Ray's object store): the
data, the evaluator's bytes and the condition sets. So a trial reads no file the driver wrote and works
on any node of a cluster; the only paths it uses are absolute ones Tune gives it.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"  # the latest full trainer checkpoint: what a retry resumes from
GENERATOR_NAME = "generator.pt"  # the best evaluation's generator file (trainers.checkpoint.generator_state)
REPORT_NAME = "report.json"  # epoch and step of that checkpoint, epoch and decision metric of that generator
GRIDS_DIR = "grids"


@dataclass(frozen=True)
class TrialSetup:
    """Search-wide settings every trial shares."""

    evaluator: bytes  # the judge's checkpoint file, official {"model": state_dict} format
    evaluator_meta: dict[str, Any]  # its sidecar (classes, fingerprint, held-out accuracy)
    conditions: dict[str, np.ndarray]  # condition set name -> (N, C) multi-hot rows, e.g. test, new_test
    max_epochs: int
    seed: int
    cpus: float
    use_gpu: bool
    decision: str = "acc"  # the metric that picks the kept generator: the search's --select (acc_val)


def _restore(scratch: Path) -> tuple[Path | None, dict[str, Any]]:
    """The latest Tune checkpoint of this trial (after a worker failure or a driver restart), copied out:
    the trainer checkpoint to resume from, the best generator so far (into scratch/generator.pt), and the
    report (epoch; best_epoch, best_acc, absent in checkpoints of older versions)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, {"epoch": 0}
    with checkpoint.as_directory() as folder:
        target = scratch / "resume.pt"  # removed with the trainer's files at the first report
        shutil.copy2(Path(folder) / CHECKPOINT_NAME, target)
        if (Path(folder) / GENERATOR_NAME).is_file():
            shutil.copy2(Path(folder) / GENERATOR_NAME, scratch / GENERATOR_NAME)
        report = json.loads((Path(folder) / REPORT_NAME).read_text())
    return target, report


def scratch_dir(experiment: str, trial_id: str) -> Path:
    """Where a trial's trainer writes, on the node the trial runs on: outside the trial directory, because
    Tune copies that directory to storage with every experiment snapshot (scratch checkpoints would be
    copied too). Its life: `scratch_folder`."""
    return Path(tempfile.gettempdir()) / "cgan-search-trials" / f"{experiment}-{trial_id}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the trainer renames new checkpoints into place: this inode stays intact
    except OSError:
        shutil.copy2(src, dst)


def trial_device(use_gpu: bool) -> torch.device:
    """cuda for a trial given a GPU; otherwise cpu, with the machine's GPUs hidden first. Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone for a zero-GPU trial (ray issue 54868), so a CPU trial on a GPU node would
    open a CUDA context (hundreds of MB on a GPU other trials are packed onto) as soon as anything asked torch
    about CUDA. Hiding works only before torch initialises CUDA in this process: call it first."""
    if not use_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def scratch_folder(experiment: str, trial_id: str) -> Iterator[Path]:
    """The trial's scratch folder (`scratch_dir`), owned by the trial alone: emptied first (a retried trial
    starts from its Tune checkpoint, not from files an earlier attempt left) and removed however the trial
    ends: done, diverged, failed, or stopped by ASHA, which Tune does by raising SystemExit inside the
    trial's `tune.report`, so the `finally` below runs. That stop can also reach the worker's exit while
    the `finally` is still deleting (seen with width-128 trials): Ray runs an actor's atexit handlers, so
    the removal is registered there too."""
    scratch = scratch_dir(experiment, trial_id)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    remove = functools.partial(shutil.rmtree, scratch, ignore_errors=True)
    atexit.register(remove)
    try:
        yield scratch
    finally:
        remove()  # on whatever node the trial ran, however it ended: nothing stays in /tmp
        atexit.unregister(remove)  # a reused actor runs the next trial: no stale handler


def _report(ev, *, scratch: Path, last: dict[str, Any], decision: str) -> None:
    """One evaluation -> one Tune result with a checkpoint: the latest trainer checkpoint (for a retry), the
    best evaluation's generator so far (no D, no optimizer state) and the sample grids. `last` carries the
    epoch and the best evaluation from one report to the next.

    Tune keeps only the latest such folder (CheckpointConfig), so a running trial holds one full checkpoint
    and one generator; the driver drops the full one when the trial ends (search/tracking.py). The trainer's
    own checkpoint files are unlinked once linked into the folder.
    """
    import ray
    from ray import tune

    from trainers.checkpoint import save_generator

    # node_id: which Ray node ran this evaluation (the driver tags the trial's MLflow run with it)
    node = ray.get_runtime_context().get_node_id()
    metrics = {**ev.metrics, "epoch": ev.epoch, "step": ev.step, "diverged": 0, "node_id": node}
    generator = scratch / GENERATOR_NAME
    if (scratch / "best.pt").is_file():  # train() writes best.pt exactly when `decision` improved
        save_generator(scratch / "best.pt", generator)
        last.update(best_epoch=ev.epoch, best_acc=metrics.get(decision))
    with tempfile.TemporaryDirectory(dir=scratch, prefix="report-") as tmp:
        folder = Path(tmp)
        _link_or_copy(Path(ev.checkpoint), folder / CHECKPOINT_NAME)
        if generator.is_file():
            _link_or_copy(generator, folder / GENERATOR_NAME)
        (folder / REPORT_NAME).write_text(json.dumps({**last, "epoch": ev.epoch, "step": ev.step}))
        (folder / GRIDS_DIR).mkdir()
        for name, grid in ev.grids.items():
            _link_or_copy(Path(grid), folder / GRIDS_DIR / f"{name}.png")
        for stale in ("last.pt", "best.pt", "resume.pt"):  # Tune's copies replace them
            (scratch / stale).unlink(missing_ok=True)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    last["epoch"] = ev.epoch


def _report_diverged(setup: TrialSetup, last: dict[str, Any], step: int) -> None:
    """A finished recipe that failed to converge (not a crash): acc 0, the search goes on. It reports every
    key an evaluation does (Ray checks each result for the searcher's metrics): the worst accuracy, FID and
    diversity, and no spread."""
    from ray import tune

    from trainers.evaluator.protocol import metric_keys

    failed = {key: 0.0 for key in metric_keys(setup.conditions)} | {"fid": float("inf")}
    tune.report({**failed, "epoch": last["epoch"] + 1, "step": step, "diverged": 1})


def run_trial(config: dict[str, Any], *, data, setup: TrialSetup) -> None:
    """Tune function trainable. `config` is a full TrainConfig dict; `data` an ImageSet."""
    from ray import tune

    from trainers.config import TrainConfig
    from trainers.evaluator import Evaluator
    from trainers.train import Diverged, train

    torch.set_num_threads(max(1, int(setup.cpus)))
    # `data` lives in Ray's read-only object store; the trainer only reads it (no copy per trial).
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    device = trial_device(setup.use_gpu)  # before anything in this process asks torch about CUDA
    context = tune.get_context()
    with scratch_folder(context.get_experiment_name(), context.get_trial_id()) as scratch:
        # the judge from its bytes (no shared filesystem needed), with every check of Evaluator.load
        evaluator = Evaluator.from_bytes(
            setup.evaluator, meta=setup.evaluator_meta, name="the search's judge", device=device
        )
        resume, restored = _restore(scratch)
        last = {k: restored[k] for k in ("epoch", "best_epoch", "best_acc") if k in restored}
        try:
            train(
                TrainConfig.from_dict(config),
                data,
                epochs=setup.max_epochs,
                out_dir=scratch,
                evaluator=evaluator,
                conditions=setup.conditions,
                resume=resume,
                callback=functools.partial(_report, scratch=scratch, last=last, decision=setup.decision),
                eval_every=1,
                device=device,
                seed=setup.seed,
                progress=False,
                select=setup.decision,
            )
        except Diverged as err:
            _report_diverged(setup, last, err.step)
