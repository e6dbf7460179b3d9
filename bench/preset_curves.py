"""Accuracy vs CPU-minutes for every preset, against its own untrained generator.

    nice python bench/preset_curves.py --iclevr DIR --iclevr-evaluator PATH --digits-evaluator PATH \
        [--budget 180] [--size 32] [--threads 1] [--presets a,b] [--set width=32] [--out bench/results]

Each preset trains on the CPU at --size (synthetic i-CLEVR; digits for InfoGAN) until its training
CPU time (process time, evaluation excluded) passes --budget seconds, evaluating every epoch with the
evaluator protocol. The untrained baseline is the same network, same seed, before any step.
Writes OUT/preset_curves.json and OUT/grids/PRESET.png (the last test.json grid), prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from trainers.config import load_preset, preset_names
from trainers.data import conditions_for, load_dataset
from trainers.evaluator import Evaluator
from trainers.step import build_gan
from trainers.train import evaluate, train


class _BudgetSpent(Exception):
    pass


def run_preset(name: str, args: argparse.Namespace, overrides: dict) -> dict:
    config = load_preset(name)
    if overrides:
        config = config.replace(**overrides)
    digits = config.arch == "infogan"
    source = "digits" if digits else args.iclevr
    ds = load_dataset(source, size=args.size, progress=False)
    evaluator = Evaluator.load(args.digits_evaluator if digits else args.iclevr_evaluator, device="cpu")
    conditions = conditions_for(ds, None if digits else Path(args.iclevr))

    torch.manual_seed(args.seed)  # train() seeds the same way before building: same initial weights
    untrained = build_gan(config, image_size=args.size, n_classes=ds.n_classes, device="cpu")
    base = evaluate(untrained, ds, evaluator, conditions, seed=args.seed)
    del untrained

    curve: list[dict] = []
    out_dir = Path(args.out) / "runs" / name
    shutil.rmtree(out_dir, ignore_errors=True)

    def record(report) -> None:
        m = report.metrics
        curve.append(
            {
                "epoch": report.epoch,
                "step": report.step,
                "cpu_min": round(m["train_cpu_seconds"] / 60, 3),
                **{k: round(v, 4) for k, v in m.items() if k.startswith("acc") or k in ("fid", "diversity")},
            }
        )
        print(f"  {name} epoch {report.epoch}: {curve[-1]}", flush=True)
        grid = report.grids.get("test") or report.grids.get("codes")
        if grid is not None:
            target = Path(args.out) / "grids" / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, target)
        if m["train_cpu_seconds"] >= args.budget:
            raise _BudgetSpent

    wall = time.perf_counter()
    diverged = None
    try:
        train(
            config,
            ds,
            epochs=10_000,
            out_dir=out_dir,
            evaluator=evaluator,
            conditions=conditions,
            callback=record,
            device="cpu",
            seed=args.seed,
            progress=False,
        )
    except _BudgetSpent:
        pass
    except Exception as err:  # noqa: BLE001 - a diverged preset is a result, not a crash of the bench
        diverged = f"{type(err).__name__}: {err}"
    best = max((c["acc"] for c in curve), default=float("nan"))
    return {
        "preset": name,
        "data": "digits" if digits else "synthetic i-CLEVR",
        "config_overrides": overrides,
        "untrained": {k: round(v, 4) for k, v in base.items()},
        "curve": curve,
        "final_acc": curve[-1]["acc"] if curve else float("nan"),
        "best_acc": best,
        "wall_min": round((time.perf_counter() - wall) / 60, 2),
        "error": diverged,
    }


def plot(results: dict, path: Path) -> None:
    """Accuracy vs training CPU-minutes, one line per preset, starting from its untrained accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for r in results.values():
        xs = [0.0] + [c["cpu_min"] for c in r["curve"]]
        ys = [r["untrained"]["acc"]] + [c["acc"] for c in r["curve"]]
        sets = ", ".join(f"{k}={v}" for k, v in r.get("config_overrides", {}).items())
        ax.plot(xs, ys, label=f"{r['preset']} ({r['data'].split()[-1]}; {sets})", linewidth=1.2)
    ax.set_xlabel("training CPU-minutes (1 thread, 32x32)")
    ax.set_ylabel("acc (evaluator protocol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(preset_names()))
    p.add_argument("--iclevr", required=True, help="synthetic i-CLEVR folder (or .parquet)")
    p.add_argument("--iclevr-evaluator", required=True)
    p.add_argument("--digits-evaluator", required=True)
    p.add_argument("--budget", type=float, default=180.0, help="training CPU-seconds per preset")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="1 on a shared CPU: idle threads spin otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every preset"
    )
    p.add_argument("--out", default="bench/results")
    p.add_argument("--plot", default=None, help="also draw every curve in OUT/preset_curves.json to this PNG")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    results_path = Path(args.out) / "preset_curves.json"
    for name in args.presets.split(","):
        print(f"{name}: training for {args.budget:.0f} CPU-seconds at {args.size}x{args.size}", flush=True)
        result = {**run_preset(name, args, overrides), "budget_cpu_s": args.budget, "threads": args.threads}
        # Re-read before writing: benches of other presets may run at the same time into the same file.
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results[name] = result
        results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(results_path)
    results = json.loads(results_path.read_text())

    if args.plot:
        plot(results, Path(args.plot))
    print("\n| preset | data | untrained acc | acc after budget (best) | CPU-min | epochs |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        last = r["curve"][-1] if r["curve"] else {}
        print(
            f"| {r['preset']} | {r['data']} | {r['untrained']['acc']:.3f} | {r['final_acc']:.3f} ({r['best_acc']:.3f}) "
            f"| {last.get('cpu_min', 0):.1f} | {last.get('epoch', 0)} |"
        )


if __name__ == "__main__":
    main()
