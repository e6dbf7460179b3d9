"""The Tune trial: build, restore, train with a report per evaluation, report divergence as acc 0.

Everything a trial needs arrives through `tune.with_parameters` (stored once in Ray's object store): the
data, the evaluator's bytes and the condition sets. So a trial reads no file the driver wrote and works
on any node of a cluster; the only paths it uses are absolute ones Tune gives it.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"  # the latest full trainer checkpoint: what a retry resumes from
GENERATOR_NAME = "generator.pt"  # the best evaluation's generator file (trainers.checkpoint.generator_state)
REPORT_NAME = "report.json"  # epoch and step of that checkpoint, epoch and acc of that generator
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


def load_evaluator(setup: TrialSetup, device: torch.device):
    """The judge rebuilt from bytes (no shared filesystem needed)."""
    from trainers.evaluator import Evaluator, ResNet18

    state = torch.load(io.BytesIO(setup.evaluator), map_location="cpu", weights_only=True)["model"]
    width, n_classes = int(state["conv1.weight"].shape[0]), int(state["fc.0.weight"].shape[0])
    net = ResNet18(n_classes=n_classes, width=width)
    net.load_state_dict(state)
    return Evaluator(
        net, classes=setup.evaluator_meta.get("classes"), meta=setup.evaluator_meta, device=device
    )


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
    copied too). The trial removes it in a `finally` however it ends: done, diverged, failed, or stopped by
    ASHA (Tune stops a function trial by raising SystemExit in its `tune.report` call), and at the worker's
    exit (atexit), which a stop can reach before that `finally` has finished."""
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


def run_trial(config: dict[str, Any], *, data, setup: TrialSetup) -> None:
    """Tune function trainable. `config` is a full TrainConfig dict; `data` an ImageSet."""
    from ray import tune

    from trainers.checkpoint import save_generator
    from trainers.config import TrainConfig
    from trainers.train import Diverged, train

    torch.set_num_threads(max(1, int(setup.cpus)))
    # `data` lives in Ray's read-only object store; the trainer only reads it (no copy per trial).
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    device = trial_device(setup.use_gpu)  # before anything in this process asks torch about CUDA
    context = tune.get_context()
    scratch = scratch_dir(context.get_experiment_name(), context.get_trial_id())
    shutil.rmtree(scratch, ignore_errors=True)  # a retried trial starts from its Tune checkpoint

    def report(ev) -> None:
        """One evaluation -> one Tune result with a checkpoint: the latest trainer checkpoint (for a retry),
        the best evaluation's generator so far (no D, no optimizer state) and the sample grids.

        Tune keeps only the latest such folder (CheckpointConfig), so a running trial holds one full
        checkpoint and one generator; the driver drops the full one when the trial ends
        (search/tracking.py). The trainer's own checkpoint files are unlinked once linked into the folder.
        """
        metrics = {**ev.metrics, "epoch": ev.epoch, "step": ev.step, "diverged": 0}
        generator = scratch / GENERATOR_NAME
        if (scratch / "best.pt").is_file():  # train() writes best.pt exactly when acc improved
            save_generator(scratch / "best.pt", generator)
            last.update(best_epoch=ev.epoch, best_acc=metrics.get("acc"))
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

    scratch.mkdir(parents=True)
    # ASHA's stop ends this thread with SystemExit while Ray already ends the actor: the `finally` below can
    # be cut short (seen with width-128 trials). Ray runs an actor's atexit handlers, in its main thread.
    remove_scratch = functools.partial(shutil.rmtree, scratch, ignore_errors=True)
    atexit.register(remove_scratch)
    try:
        evaluator = load_evaluator(setup, device)
        resume, restored = _restore(scratch)
        last = {k: restored[k] for k in ("epoch", "best_epoch", "best_acc") if k in restored}
        train(
            TrainConfig.from_dict(config),
            data,
            epochs=setup.max_epochs,
            out_dir=scratch,
            evaluator=evaluator,
            conditions=setup.conditions,
            resume=resume,
            callback=report,
            eval_every=1,
            device=device,
            seed=setup.seed,
            progress=False,
        )
    except Diverged as err:
        # A finished recipe that failed to converge (not a crash): acc 0, the search goes on. It reports
        # every key an evaluation does (Ray checks each result for the searcher's metrics): the worst
        # accuracy, FID and diversity, and no spread.
        from trainers.evaluator.protocol import metric_keys

        failed = {key: 0.0 for key in metric_keys(setup.conditions)} | {"fid": float("inf")}
        tune.report({**failed, "epoch": last["epoch"] + 1, "step": err.step, "diverged": 1})
    finally:
        # On whatever node the trial ran, however it ended (ASHA's stop included): nothing stays in /tmp.
        remove_scratch()
        atexit.unregister(remove_scratch)  # a reused actor runs the next trial: no stale handler
