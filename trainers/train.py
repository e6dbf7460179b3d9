"""Train one cGAN recipe: build, restore, a bounded loop of epochs, evaluate, checkpoint, report.

    from trainers.train import train, Diverged, EvalReport
    result = train(config, data, epochs=20, out_dir=Path("/abs/run"), evaluator=ev,
                   conditions={"test": c1, "new_test": c2}, callback=report_fn)

One epoch = `steps_per_epoch(len(data), config)` = round(len(data) / (batch_size * n_critic)) training
steps, each n_critic D updates then one G update: D sees about len(data) real images per epoch whatever
n_critic is, so an epoch costs about the same compute across recipes (what ASHA compares by; max(1, ...)
for tiny sets). The trainer imports no framework: it reports every evaluation through
`callback(EvalReport)`, which may raise to stop training.

Command line: python -m trainers.train --preset NAME --data DIR --epochs E [--size S] [--out DIR] ...
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainers.cli import (
    EXIT_DIVERGED,
    OneLineParser,
    output_folder,
    positive_int,
    power_of_two_size,
    run_command,
    seed_int,
)
from trainers.cli import device as device_arg
from trainers.config import ConfigError, TrainConfig, load_preset, preset_names

# torch, the step and the checkpoint are imported where they are used, not here: `python -m trainers.train`
# then parses its arguments (--help, a refusal) in well under a second instead of after ~3 s of torch.
if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from trainers.step import GAN, Diverged

__all__ = ["Diverged", "EvalReport", "evaluate", "steps_per_epoch", "train"]

LOG_EVERY = 50  # steps between loss reads: each read is one device sync, negligible at this interval
N_REAL_FID = 1000  # real images FID is computed against: fixed, so FIDs compare across trials
INFOGAN_PER_CODE = 100  # generated images per discrete code value for the matched accuracy and diversity


@dataclass(frozen=True)
class EvalReport:
    """What the trainer tells its caller after each evaluation."""

    epoch: int  # epochs completed
    step: int  # G steps completed
    metrics: dict[str, float]  # acc, acc_test, acc_new_test, acc_std, fid, diversity, loss_d, loss_g, ...
    checkpoint: Path  # the latest checkpoint, written before the callback runs
    grids: dict[str, Path] = field(default_factory=dict)  # condition set name -> sample grid PNG


def steps_per_epoch(n_images: int, config: TrainConfig) -> int:
    """G steps per epoch: D's n_critic batches per step add up to about one pass over the data."""
    return max(1, round(n_images / (config.batch_size * config.n_critic)))


def _device_data(data: Any, device: torch.device) -> Any:
    """Accept an ImageSet (moved to the device here) or an object already shaped like DeviceData."""
    if hasattr(data, "sample"):
        return data
    from trainers.data import DeviceData  # lazy: callers that bring DeviceData need not import the data stack

    return DeviceData(data, device)


def __getattr__(name: str) -> Any:
    """`from trainers.train import Diverged` keeps working while the step (torch) loads only when asked."""
    if name == "Diverged":
        from trainers.step import Diverged

        return Diverged
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _EvalHarness:
    """The evaluation harness of one run: it puts the generator in eval mode, isolates the RNG so that
    training continues identically whether or not (and however often) it evaluates, and hands the images to
    the judge (the evaluator) through the evaluation protocol."""

    def __init__(self, gan: GAN, data: Any, evaluator: Any, conditions: Mapping[str, Any], seed: int):
        import torch

        self.gan, self.evaluator, self.seed = gan, evaluator, seed
        self.conditions = {
            k: v.float().cpu() if torch.is_tensor(v) else torch.from_numpy(np.array(v, dtype=np.float32))
            for k, v in conditions.items()
        }
        self.n_classes = data.labels.shape[1]
        # One fixed real subset, kept alive so the evaluator caches its features across evaluations.
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:N_REAL_FID]
        self.real = (
            data.images[idx.to(data.images.device)].permute(0, 2, 3, 1).cpu().contiguous()
        )  # (N, H, W, 3)
        self.by_codes = gan.latent.disc > 0 and gan.config.g_cond == "none"

    def generate(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        z, _ = self.gan.latent.sample(len(labels), device=self.gan.device, generator=generator)
        with self.gan.autocast():
            return self.net(z, labels.to(self.gan.device)).float()

    def generate_codes(self, disc: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        z, _ = self.gan.latent.sample(len(disc), device=self.gan.device, generator=generator, disc=disc)
        with self.gan.autocast():
            return self.net(z, torch.zeros(len(disc), self.n_classes, device=self.gan.device)).float()

    @contextlib.contextmanager
    def _eval_mode(self):
        import torch

        self.net = self.gan.generator_for_eval
        was_training = self.net.training
        devices = [self.gan.device] if self.gan.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.net.eval()
            try:
                yield
            finally:
                self.net.train(was_training)

    def metrics(self) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        # lazy: training without a judge skips the evaluator package
        from trainers.evaluator.protocol import evaluate_codes, evaluate_generator

        with self._eval_mode():
            if self.by_codes:  # the same keys as below (acc, acc_<set>, acc_std, fid, diversity)
                return evaluate_codes(
                    self.generate_codes,
                    self.evaluator,
                    self.conditions,
                    n_codes=self.gan.latent.disc,
                    real=self.real,
                    per_code=INFOGAN_PER_CODE,
                    seed=self.seed,
                )
            return evaluate_generator(
                self.generate, self.evaluator, self.conditions, real=self.real, seed=self.seed
            )

    def grids(self, out_dir: Path, epoch: int) -> dict[str, Path]:
        """One image per condition row (or 10 per code value for InfoGAN), 8 per grid row."""
        import torch
        from torchvision.utils import save_image

        paths = {}
        with self._eval_mode():
            gen = torch.Generator().manual_seed(self.seed)
            if self.by_codes:
                disc = torch.arange(self.gan.latent.disc).repeat_interleave(8)
                sets = {"codes": self.generate_codes(disc, gen)}
            else:
                sets = {name: self.generate(c, gen) for name, c in self.conditions.items()}
            for name, images in sets.items():
                path = out_dir / "grids" / f"{name}_epoch{epoch:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image(images.add(1).div(2).clamp(0, 1).cpu(), path, nrow=8, padding=1)
                paths[name] = path
        return paths


def evaluate(
    gan: GAN, data: Any, evaluator: Any, conditions: Mapping[str, np.ndarray | Tensor], *, seed: int = 0
) -> dict[str, float]:
    """The metrics train() reports, for any GAN: e.g. a freshly built one, as the untrained baseline."""
    return _EvalHarness(gan, _device_data(data, gan.device), evaluator, conditions, seed).metrics()


def train(
    config: TrainConfig,
    data: Any,
    *,
    epochs: int,
    out_dir: str | Path,
    evaluator: Any | None,
    conditions: Mapping[str, np.ndarray | Tensor],
    resume: str | Path | None = None,
    callback: Callable[[EvalReport], None] | None = None,
    eval_every: int = 1,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    select: str = "acc",
) -> dict[str, Any]:
    """Train `config` on `data` (ImageSet or DeviceData) up to `epochs` epochs in total.

    Evaluates (metrics, grids, `out_dir/last.pt`, and `out_dir/best.pt` when the `select` metric improves:
    a search passes acc_val, so the kept generator is not chosen on the reported test accuracy) every
    `eval_every` epochs and after the last, then calls `callback`. With `resume`, continues from that
    checkpoint (same config required) and gives the same weights as an uninterrupted run.
    Raises Diverged on a non-finite loss. Returns {"epoch", "step", "metrics", "best_acc", "checkpoint",
    "best_checkpoint"}.
    """
    if epochs < 1 or eval_every < 1:
        raise ValueError(f"epochs and eval_every must be >= 1, got {epochs}, {eval_every}")
    import torch

    from trainers.checkpoint import load_checkpoint, make_checkpoint, restore, save_checkpoint
    from trainers.step import build_gan, train_step

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    data = _device_data(data, device)
    image_size, n_classes = int(data.images.shape[-1]), int(data.labels.shape[1])
    info = {
        "image_size": image_size,
        "n_classes": n_classes,
        "classes": list(getattr(data, "classes", ())),
        "fingerprint": str(getattr(data, "fingerprint", "")),
    }
    gan = build_gan(config, image_size=image_size, n_classes=n_classes, device=device)
    # On the CPU whatever the data's device: its state resumes on any device (DeviceData.sample).
    sampler = torch.Generator().manual_seed(seed)
    start, best_acc, metrics, clock = 0, -math.inf, {}, {"train_seconds": 0.0, "train_cpu_seconds": 0.0}
    if resume is not None:
        state = load_checkpoint(resume)
        _check_resumable(state, config, info, resume)
        start = restore(gan, state, data_generator=sampler)
        metrics = state["metrics"]
        best_acc = float(state["best_acc"])
        clock = {k: float(metrics.get(k, 0.0)) for k in clock}
    harness = _EvalHarness(gan, data, evaluator, conditions, seed)
    spe = steps_per_epoch(len(data), config)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    bar = _progress(total=(epochs - start) * spe, enabled=progress and start < epochs)

    try:  # closed before a Diverged or Ctrl-C reaches the CLI: its one line is then the last one printed
        for epoch in range(start + 1, epochs + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(spe):
                train_step(gan, data, sampler)
                if (i + 1) % LOG_EVERY == 0:
                    bar.set_postfix(epoch=epoch, **{k: f"{v:.3f}" for k, v in gan.read_losses().items()})
                bar.update(1)
            losses = gan.read_losses()  # raises Diverged
            clock["train_seconds"] += time.perf_counter() - t0
            clock["train_cpu_seconds"] += time.process_time() - c0
            if epoch % eval_every and epoch != epochs:
                continue
            metrics = {**losses, **clock, **harness.metrics()}
            grids = harness.grids(out_dir, epoch)
            improved = metrics.get(select, -math.inf) > best_acc
            best_acc = max(best_acc, metrics.get(select, -math.inf))
            state = make_checkpoint(gan, epoch=epoch, data_generator=sampler, data_info=info, metrics=metrics)
            state["best_acc"] = best_acc
            save_checkpoint(state, last)
            if improved:
                save_checkpoint(state, best)
            if callback is not None:
                callback(
                    EvalReport(
                        epoch=epoch, step=gan.step, metrics=dict(metrics), checkpoint=last, grids=grids
                    )
                )
    finally:
        bar.close()
    return {
        "epoch": max(start, epochs),
        "step": gan.step,
        "metrics": metrics,
        "best_acc": best_acc,
        "checkpoint": last,
        "best_checkpoint": best if best.exists() else None,
    }


def _check_resumable(state: Mapping[str, Any], config: TrainConfig, info: Mapping[str, Any], path) -> None:
    saved = state["config"]
    diff = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v and k != "compile")
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} there, {getattr(config, k)!r} here" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ConfigError(
            f"{path}: checkpoint config differs in {', '.join(diff)} ({shown}{more}); "
            "resume needs the same config (the same --preset and --set)"
        )
    for key in ("image_size", "n_classes"):
        if state["data"][key] != info[key]:
            raise ConfigError(f"{path}: checkpoint has {key} {state['data'][key]}, data has {info[key]}")


class _NoBar:
    def set_postfix(self, **kw) -> None: ...
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(*, total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # a bare GPU machine may lack tqdm: train silently rather than fail
        return _NoBar()
    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)


# --- Command line -----------------------------------------------------------------------------------

# What --resume reads from a checkpoint besides the weights; a file missing one cannot continue a run.
RESUME_KEYS = ("config", "data", "G", "D", "G_ema", "opt_g", "opt_d", "step", "epoch", "rng", "best_acc")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainers.train", description="Train one cGAN preset.")
    p.add_argument("--preset", required=True, help=f"one of: {', '.join(preset_names())}")
    p.add_argument("--data", required=True, help="'digits', a packed .parquet, or a folder in i-CLEVR layout")
    p.add_argument(
        "--epochs", type=positive_int, required=True, help="total epochs (with --resume: up to this many)"
    )
    p.add_argument(
        "--size", type=power_of_two_size, default=64, help="training resolution, a power of two (default 64)"
    )
    p.add_argument(
        "--out",
        type=output_folder,
        default=None,
        help="run folder (default data/runs/PRESET); one holding a run is refused unless --resume continues it",
    )
    p.add_argument(
        "--evaluator", type=Path, default=None, help="evaluator checkpoint (default: the data's own)"
    )
    p.add_argument(
        "--eval-every", type=positive_int, default=1, help="epochs between evaluations (default 1)"
    )
    p.add_argument("--seed", type=seed_int, default=0, help="0 .. 2**32 - 1 (default 0)")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from (e.g. RUN/last.pt)")
    p.add_argument("--device", type=device_arg, default=None, help="default: cuda when available, else cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return p


def _default_evaluator(data: str) -> Path | None:
    """The evaluator `python -m trainers.evaluator fit` writes for this data, if it exists."""
    path = Path(data)
    if data == "digits":
        candidate = Path("data") / "digits" / "evaluator.pt"
    else:
        candidate = path / "evaluator.pt" if path.is_dir() else path.with_suffix(".evaluator.pt")
    return candidate if candidate.is_file() else None


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with each --set KEY=VALUE applied (VALUE read as YAML: 2e-4, true, 'channel+acgan');
    a bad item is one ConfigError naming it."""
    import yaml

    config = load_preset(args.preset)
    changes: dict[str, Any] = {"compile": True} if args.compile else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set width=32")
        try:
            changes[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except ConfigError as err:
        items = " ".join(f"--set {i}" for i in args.set)
        raise ConfigError(f"{items}: {err}") from None


def _resume_state(args: argparse.Namespace, config: TrainConfig, out: Path) -> dict[str, Any]:
    """The --resume checkpoint, checked against everything known before the data loads (a refusal then
    costs seconds, not a pack build)."""
    from trainers.checkpoint import load_checkpoint

    state = load_checkpoint(args.resume, mmap=True)
    missing = [k for k in RESUME_KEYS if k not in state]
    data = state.get("data")
    missing += [
        f"data.{k}" for k in ("image_size", "n_classes") if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise ConfigError(f"{args.resume}: cannot resume from it, it lacks {', '.join(missing)}")
    _check_resumable(state, config, {**state["data"], "image_size": args.size}, args.resume)
    if int(state["epoch"]) > args.epochs:
        raise ConfigError(
            f"{args.resume} is at epoch {state['epoch']}, past --epochs {args.epochs} "
            "(--epochs is the total to train up to, not the number of extra epochs)"
        )
    return state


def _check_out(out: Path, resume: Path | None) -> None:
    """A fresh run never overwrites another run's checkpoints; --resume of a checkpoint inside `out`
    continues that run, which is the one case where they are meant to be replaced."""
    held = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    if not held:
        return
    if resume is not None and resume.resolve().parent == out.resolve():
        return
    raise ConfigError(
        f"--out {out} already holds a run ({', '.join(held)}): continue it with --resume {out / held[0]}, "
        "or give another --out"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checked: dict[str, Any] = {}

    def check() -> None:  # what needs no torch: a bad --set or an occupied --out is refused before it loads
        checked["config"] = _config_from_args(args)
        checked["out"] = args.out or Path("data") / "runs" / args.preset
        _check_out(checked["out"], args.resume)

    if code := run_command(check, (ConfigError,), prog=parser.prog):
        return code
    import torch

    from trainers.checkpoint import CheckpointError
    from trainers.data import DataError, conditions_for, load_dataset
    from trainers.evaluator import Evaluator, EvaluatorError
    from trainers.step import Diverged

    if args.threads:
        torch.set_num_threads(args.threads)

    def body() -> None:
        config, out = checked["config"], checked["out"]
        state = _resume_state(args, config, out) if args.resume is not None else None
        ds = load_dataset(args.data, size=args.size, progress=True)
        if state is not None:
            _check_resumable(state, config, {"image_size": ds.size, "n_classes": ds.n_classes}, args.resume)
            del state  # train() reads the file again; the weights need not stay mapped meanwhile
        root = Path(args.data) if Path(args.data).is_dir() else None
        conditions = conditions_for(ds, root)
        ev_path = args.evaluator or _default_evaluator(args.data)
        evaluator = Evaluator.load(ev_path, device=args.device) if ev_path else None
        if evaluator is None:
            print("note: no evaluator found (--evaluator): training without metrics", file=sys.stderr)
        result = train(
            config,
            ds,
            epochs=args.epochs,
            out_dir=out,
            evaluator=evaluator,
            conditions=conditions,
            resume=args.resume,
            eval_every=args.eval_every,
            device=args.device,
            seed=args.seed,
            callback=lambda r: print(
                f"epoch {r.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items()),
                file=sys.stderr,
            ),
        )
        print(f"done: {result['epoch']} epochs, {result['step']} steps; checkpoints in {out}")

    # A diverged run is the recipe's failure, not the user's: its own exit code (3).
    return run_command(
        body,
        (ConfigError, CheckpointError, DataError, EvaluatorError, Diverged),
        prog=parser.prog,
        exit_codes={Diverged: EXIT_DIVERGED},
    )


if __name__ == "__main__":
    sys.exit(main())
