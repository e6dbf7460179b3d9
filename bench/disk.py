"""Benchmark: bytes on disk per trial, by architecture and width at 64x64, written by the search's own code.

    python bench/disk.py [--archs dcgan,sagan,resnet] [--widths 32,64,128] [--out DIR]

Runs real Tune trials (search/trial.py's `run_trial`, the driver's CheckpointConfig, TrialRunsCallback into a
real MLflow store) for every architecture x width of the GPU budget's space (spaces/clevr.yaml), one trial at
a time: once to max_epochs (COMPLETE) and once stopped after its first evaluation (PRUNED, as ASHA stops a
trial), under each --pruned-generator choice. Each trial takes the largest-bytes settings the space allows
for its architecture and width (g_cond embed, embed_dim 128, z_dim 128, d_cond channel+acgan, EMA on, Adam)
so the figures are upper bounds. While a trial runs, a thread polls the bytes of its Tune folder and its
scratch folder (the peak); after the search, the bytes of each trial's Tune folder and MLflow artifacts are
read from disk. Images, the judge and the data are tiny stand-ins: the bytes of a checkpoint depend on the
networks, not on what they learned. The last lines price the GPU budget's 64 trials: 5 presets and 59
configs drawn from the space's prior (what TPE's random start-up draws from), each at the measured bytes of
its architecture and width.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path`, each inode once (hard links are one file on disk)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed while walking (a trial's temporary report folder)
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class PeakPoller:
    """Polls the bytes under some folders every few milliseconds; `peak` is the largest sum seen."""

    def __init__(self, folders, every: float = 0.005):
        self.folders, self.every, self.peak = folders, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(tree_bytes(f) for f in self.folders() if f.exists()))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def largest_config(arch: str, width: int) -> dict:
    """The space's largest networks at this architecture and width (sagan and WGAN's spectral-norm rules hold)."""
    return {
        "arch": arch,
        "loss": "hinge",
        "g_cond": "embed",
        "d_cond": "channel+acgan",
        "d_norm": "spectral",
        "embed_dim": 128,
        "z_dim": 128,
        "width": width,
        "attn_res": 16,
        "ema": 0.999,
        "optimizer": "adam",
        "batch_size": 4,  # bytes do not depend on it; a small batch keeps a width-128 step short on a CPU
    }


def stand_ins(size: int):
    """Tiny data with i-CLEVR's 24 classes, 8 condition rows, an untrained official-format judge."""
    from trainers.data import ImageSet
    from trainers.data.labels import iclevr_conditions, load_vocab, spec_file
    from trainers.evaluator import ResNet18

    classes = load_vocab(spec_file("objects.json"))
    rng = np.random.default_rng(0)
    n_classes = len(classes)
    data = ImageSet(
        images=rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8),
        labels=(rng.random((8, n_classes)) < 0.1).astype(np.float32),
        files=tuple(f"{i}.png" for i in range(8)),
        classes=tuple(classes),
        fingerprint="bench-disk",
    )
    judge = io.BytesIO()
    torch.save({"model": ResNet18(n_classes=n_classes, width=8).state_dict()}, judge)
    conditions = {"test": iclevr_conditions()["test"][:8]}  # 8 of test.json's rows: a short evaluation
    return data, judge.getvalue(), {"classes": list(classes)}, conditions


def run_pass(
    name, configs, *, home, data, judge, meta, conditions, stop_after, pruned_generator, client, exp
):
    """One Tuner run over `configs`, one trial at a time; returns {trial_id: measurements}."""
    from ray import tune

    from search import tracking
    from search.driver import checkpoint_config
    from search.trial import TrialSetup, run_trial, scratch_dir

    max_epochs = 2
    parent = tracking.create_parent(client, exp, name=name, experiment_dir=name, tags={}, params={})
    callback = tracking.TrialRunsCallback(
        tracking_uri=client.tracking_uri,
        experiment_id=exp,
        parent_run_id=parent,
        max_epochs=max_epochs,
        pruned_generator=pruned_generator,
    )
    setup = TrialSetup(
        evaluator=judge,
        evaluator_meta=meta,
        conditions=conditions,
        max_epochs=max_epochs,
        seed=0,
        cpus=1,
        use_gpu=False,
    )
    storage = home / "ray_results"
    peaks: dict[str, int] = {}
    current: dict[str, str] = {}

    class Watch(tune.Callback):
        """Which trial runs now (one at a time), so the poller measures that trial's folders."""

        poller: PeakPoller | None = None

        def on_trial_start(self, iteration, trials, trial, **info):
            if "id" in current and self.poller is not None:  # the previous trial's peak, then start afresh
                peaks[current["id"]] = max(peaks.get(current["id"], 0), self.poller.peak)
                self.poller.peak = 0
            current["id"] = trial.trial_id

    def folders():
        tid = current.get("id")
        if tid is None:
            return []
        return [storage / name / f"trial_{tid}", scratch_dir(name, tid)]

    base = {k: v for k, v in configs[0].items() if k not in ("arch", "width")}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, data=data, setup=setup), {"cpu": 1}),
        param_space={
            **base,
            "arch": tune.grid_search(sorted({c["arch"] for c in configs})),
            "width": tune.grid_search(sorted({c["width"] for c in configs})),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=1,  # one at a time: the poller attributes every byte to one trial
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=[Watch(), callback],
            checkpoint_config=checkpoint_config(),
            stop={"epoch": stop_after} if stop_after else None,  # Tune's stop is ASHA's: the trial ends early
            verbose=0,
        ),
    )
    with PeakPoller(folders) as poller:
        Watch.poller = poller
        grid = tuner.fit()
    peaks[current["id"]] = max(peaks.get(current["id"], 0), poller.peak)
    results = {}
    for result in grid:
        trial_id = result.metrics["trial_id"]
        config = result.config
        (run,) = client.search_runs([exp], filter_string=f"tags.`ray.trial_id` = '{trial_id}'")
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        tune_dir = storage / name / f"trial_{trial_id}"
        results[trial_id] = {
            "arch": config["arch"],
            "width": config["width"],
            "state": run.data.tags.get("optuna.state"),
            "error": str(result.error) if result.error else None,
            "peak_running": peaks[trial_id],
            "tune_after": tree_bytes(tune_dir),
            "tune_weights_after": sum(p.stat().st_size for p in tune_dir.rglob("*.pt")),
            "mlflow_after": tree_bytes(artifacts),
            "mlflow_weights_after": sum(p.stat().st_size for p in artifacts.rglob("*.pt")),
            "scratch_left": scratch_dir(name, trial_id).exists(),
        }
    return results


def gpu_budget_draws(n: int = 64) -> list[tuple[str, int]]:
    """(arch, width) of the GPU budget's n trials: its presets first, then the space's prior, seeded."""
    from search.clevr import CLEVR
    from spaces import load_space
    from trainers.config import load_preset

    space = load_space(ROOT / "spaces" / CLEVR.gpu.space)
    draws = [(load_preset(p).arch, load_preset(p).width) for p in CLEVR.gpu.presets]
    seed = 0
    while len(draws) < n:
        config = space.sample(seed)
        draws.append((config["arch"], config["width"]))
        seed += 1
    return draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="dcgan,sagan,resnet")
    parser.add_argument("--widths", default="32,64,128", help="the GPU budget space's widths")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    archs = args.archs.split(",")
    widths = [int(w) for w in args.widths.split(",")]

    from search.driver import LOOPBACK_ONLY_ENV, start_ray

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ[LOOPBACK_ONLY_ENV] = "0"  # a local Ray on loopback only, as the search starts it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        home = (args.out or Path(tmp)).resolve()
        home.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        from search import tracking

        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        exp = tracking.ensure_experiment(
            client, "disk", tracking_uri=client.tracking_uri, artifact_root=home / "mlartifacts"
        )
        data, judge, meta, conditions = stand_ins(args.size)
        configs = [largest_config(a, w) for a in archs for w in widths]
        import ray

        start_ray(None)
        started = time.time()
        try:
            common = dict(
                home=home, data=data, judge=judge, meta=meta, conditions=conditions, client=client, exp=exp
            )
            passes = {
                "complete": run_pass("complete", configs, stop_after=0, pruned_generator="none", **common),
                "pruned-none": run_pass(
                    "pruned-none", configs, stop_after=1, pruned_generator="none", **common
                ),
                "pruned-last": run_pass(
                    "pruned-last", configs, stop_after=1, pruned_generator="last", **common
                ),
            }
        finally:
            ray.shutdown()
        (home / "disk.json").write_text(json.dumps(passes, indent=1, default=str))
        report(passes, widths, archs, args, time.time() - started)


def report(passes, widths, archs, args, seconds) -> None:
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; {seconds:.0f} s; size {args.size}x{args.size}"
    )
    for name, results in passes.items():
        for r in results.values():
            if r["error"]:
                raise SystemExit(f"{name} {r['arch']} w{r['width']}: {r['error']}")
    left = [
        f"{n} {r['arch']} w{r['width']}" for n, rs in passes.items() for r in rs.values() if r["scratch_left"]
    ]
    print(f"scratch folders left after their trial: {', '.join(left) or 'none'}")
    print(
        "\n| arch | width | peak while running (Tune + scratch) | after: complete (Tune + MLflow) | "
        "after: pruned, none | after: pruned, last |"
    )
    print("|---|---|---|---|---|---|")
    cell: dict[tuple[str, int], dict[str, int]] = {}
    for key in [(a, w) for a in archs for w in widths]:
        row = {}
        for name, results in passes.items():
            (r,) = [r for r in results.values() if (r["arch"], r["width"]) == key]
            expect = "COMPLETE" if name == "complete" else "PRUNED"
            assert r["state"] == expect, (name, key, r["state"])
            row[name] = r["tune_after"] + r["mlflow_after"]
            row[f"{name}-peak"] = r["peak_running"]
        cell[key] = row
        print(
            f"| {key[0]} | {key[1]} | {row['complete-peak'] / MiB:.1f} MiB | {row['complete'] / MiB:.1f} MiB | "
            f"{row['pruned-none'] / MiB:.2f} MiB | {row['pruned-last'] / MiB:.1f} MiB |"
        )
    draws = gpu_budget_draws()
    counts: dict[tuple[str, int], int] = {}
    for d in draws:
        counts[d] = counts.get(d, 0) + 1
    print(
        "\nGPU budget draws (5 presets + 59 from the prior): "
        + ", ".join(f"{a} w{w}: {n}" for (a, w), n in sorted(counts.items()))
    )
    if set(counts) - set(cell):
        print("(the 64-trial totals need every arch x width of the space: run without --archs/--widths)")
        return
    from search.clevr import CLEVR

    gpu = CLEVR.gpu
    rungs, t = 0, gpu.grace_epochs
    while t < gpu.max_epochs:  # ASHA's milestones: grace * rf^k below max_t
        rungs, t = rungs + 1, t * gpu.reduction_factor
    nominal = math.ceil(len(draws) / gpu.reduction_factor**rungs)
    pruned = sum(cell[d]["pruned-none"] for d in draws)
    worst = max(cell.values(), key=lambda r: r["complete"])
    extra = worst["complete"] - worst["pruned-none"]
    fits = int((2 * 2**30 - pruned) // extra)
    print(
        f"64 trials, default (--pruned-generator none), {nominal} reaching max_epochs (ASHA: {rungs} rungs at "
        f"rf {gpu.reduction_factor} keep 1/{gpu.reduction_factor**rungs}), each at the largest cell: "
        f"{(pruned + nominal * extra) / 2**30:.2f} GiB; under 2 GiB for up to {fits} trials reaching max_epochs"
    )
    total = sum(cell[d]["complete"] for d in draws)
    print(
        f"64 trials, every trial keeping a generator (all complete, or --pruned-generator last): {total / 2**30:.2f} GiB"
    )
    peaks = sorted((r["complete-peak"] for r in cell.values()), reverse=True)
    print(
        f"peak while running, 4 trials at once (0.25 GPU each) of the 4 largest cells: {sum(peaks[:4]) / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
