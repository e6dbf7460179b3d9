"""The GPU benchmark in one command: correctness, speed, packing, auto packing and a short search-equivalent.

    python -m bench.gpu --out bench/results/gpu.json              # a GPU machine: ~8 minutes (--budget 450)
    python -m bench.gpu --device cpu --tiny --out /tmp/gpu.json   # the same code at toy sizes (CI, ~30 s)

Needs only torch, torchvision, numpy, pyarrow, pyyaml (and PIL/tqdm for the render): what a bare GPU machine
has; nothing on its import path imports ray, optuna or mlflow (the JSON records that). Run it from the
repository root (`-m`, so the project imports without being installed). Sections, in order:

- correctness: one training step of every architecture x loss x D-normalisation x D-conditioning combination
  the config accepts (G conditioning rotated over the valid ones), at 64x64 with the speed settings the step
  turns on by itself on CUDA (bf16 autocast, channels_last, fused Adam); every loss finite; and the judge's
  official accuracy on the same images, on the CPU and on the device: identical is the target.
- speed: images/s of one trial (real images D sees per second) for the 64x64 DCGAN and SAGAN presets, with
  torch.compile off and on; and the project's step vs a bare PyTorch loop (bench/train_step.py's).
- packing: 1, 2, 4, 8 trainer processes on one GPU at once (separate processes, as Ray runs packed trials):
  total and per-trial images/s, peak memory per trial (torch.cuda.max_memory_allocated), GPU utilisation
  from nvidia-smi when present.
- auto: what `--gpus-per-trial auto` would choose for spaces/clevr.yaml at 64x64 (search/packing.py's probe).
- search: the GPU budget's data and judge (render, fit, its held-out accuracy against the 0.9 floor, judge
  accuracy CPU vs device on real images) and its first ASHA rung (grace epochs) for each preset: wall time.

Every section runs inside `--budget` seconds in all; one that would not fit is cut short or skipped, and the
JSON says which. Writes the JSON (--out) and a Markdown table (beside it, .md) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.config import ConfigError, TrainConfig, load_preset
from trainers.data import DeviceData, ImageSet
from trainers.step import build_gan, train_step

ROOT = Path(__file__).resolve().parent.parent
SPEED_PRESETS = ("dcgan_bce", "sagan_wgan_gp")  # the 64x64 DCGAN and SAGAN recipes
PACK_PRESET = "dcgan_bce"
N_CLASSES = 24  # i-CLEVR's
# Share of the time budget each section may use (the search gets what the others leave).
SHARES = {"correctness": 0.15, "speed": 0.25, "packing": 0.35, "auto": 0.2, "search": 1.0}


class Clock:
    """The run's time budget: each section gets a deadline, loops stop at it."""

    def __init__(self, budget: float):
        self.start, self.end = time.perf_counter(), time.perf_counter() + budget

    def left(self) -> float:
        return self.end - time.perf_counter()

    def deadline(self, share: float) -> float:
        return time.perf_counter() + max(0.0, self.left()) * share


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_images(n: int, size: int, *, seed: int = 0) -> ImageSet:
    """Uniform noise with 1-3 of 24 classes per image: speed and memory do not depend on the pixels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, N_CLASSES), np.float32)
    for row in labels:
        row[rng.choice(N_CLASSES, rng.integers(1, 4), replace=False)] = 1.0
    return ImageSet(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=labels,
        files=tuple(f"r{i}.png" for i in range(n)),
        classes=tuple(f"c{i}" for i in range(N_CLASSES)),
        fingerprint="random",
    )


def sizes(args) -> dict[str, Any]:
    """Network sizes for the correctness grid: test_step's tiny ones, a little wider on a GPU."""
    from tests.tiny import TINY

    return {**TINY, "width": 4 if args.tiny else 16, "batch_size": 2 if args.tiny else 8}


def scaled(config: TrainConfig, args) -> TrainConfig:
    """A preset as written on a GPU; at toy sizes with --tiny."""
    if not args.tiny:
        return config
    from tests.tiny import TINY

    small = {k: v for k, v in TINY.items() if k not in ("disc_codes", "cont_codes")}
    return config.replace(**{**small, "batch_size": 4})


# --- correctness --------------------------------------------------------------------------------------------


def combinations(args) -> list[dict[str, Any]]:
    """Every arch x loss x d_norm x d_cond the config accepts (tests/test_step.py's grid, G conditioning
    rotated: the first one valid for the combination, starting at a different one each time)."""
    from tests.test_step import COMBOS, as_config
    from trainers.models.conditioning import G_CONDITIONING

    g_conds = sorted(G_CONDITIONING)
    # (arch, loss, D's weights = (d_norm, spectral), d_cond): test_step's grid without G's conditioning
    four = list(dict.fromkeys(c[:4] for c in COMBOS))
    out = []
    for i, head in enumerate(four):
        for g_cond in g_conds[i % len(g_conds) :] + g_conds[: i % len(g_conds)]:
            combo = as_config((*head, g_cond))
            try:
                TrainConfig.from_dict({**combo, **sizes(args)})
            except ConfigError:
                continue
            out.append(combo)
            break
    if args.max_combos and len(out) > args.max_combos:  # an even spread over the grid
        step = len(out) / args.max_combos
        out = [out[int(i * step)] for i in range(args.max_combos)]
    return out


def speed_settings(gan) -> dict[str, bool]:
    weights = [p for p in gan.G.parameters() if p.dim() == 4]
    with gan.autocast():
        autocast = torch.is_autocast_enabled(gan.device.type)
    return {
        "bf16_autocast": autocast,
        "channels_last": all(p.is_contiguous(memory_format=torch.channels_last) for p in weights),
        "fused_adam": bool(gan.opt_d.defaults.get("fused")) if gan.config.optimizer == "adam" else None,
    }


def judge_agreement(ev_device, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The same judge weights and images scored on the CPU and on the judge's device."""
    from trainers.evaluator import Evaluator

    ev_cpu = Evaluator(copy.deepcopy(ev_device.net).cpu(), classes=ev_device.classes, device="cpu")
    p_cpu = ev_cpu.scores(images)
    acc_cpu = ev_cpu.accuracy(images, labels)
    p_dev = ev_device.scores(images)
    acc_dev = ev_device.accuracy(images, labels)
    return {
        "device": str(ev_device.device),
        "images": len(images),
        "acc_cpu": acc_cpu,
        "acc_device": acc_dev,
        "identical": acc_cpu == acc_dev,
        "max_prob_diff": float((p_cpu - p_dev).abs().max()),
        "same_ranking": bool(
            torch.equal(torch.argsort(p_cpu, dim=1, stable=True), torch.argsort(p_dev, dim=1, stable=True))
        ),
    }


def correctness(args, device: torch.device, deadline: float) -> dict[str, Any]:
    from trainers.evaluator import Evaluator, ResNet18

    size = 16 if args.tiny else 64
    data = DeviceData(random_images(64, size), device)
    combos, results, failures, settings = combinations(args), 0, [], None
    start = time.perf_counter()
    for combo in combos:
        if time.perf_counter() > deadline:
            break
        cfg = TrainConfig.from_dict({**combo, **sizes(args)})
        try:
            gan = build_gan(cfg, image_size=size, n_classes=N_CLASSES, device=device)
            settings = settings or speed_settings(gan)
            train_step(gan, data, torch.Generator().manual_seed(0))
            losses = gan.read_losses()  # raises Diverged on a non-finite loss
            if not all(math.isfinite(v) for v in losses.values()):
                raise RuntimeError(f"non-finite losses {losses}")
        except Exception as e:  # record and go on: the point is the list of what fails
            failures.append({**combo, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        results += 1
    torch.manual_seed(0)
    net = ResNet18(n_classes=N_CLASSES, width=4 if args.tiny else 32)
    judged = random_images(256 if args.tiny else 2048, 64, seed=1)
    from trainers.data import to_model_range

    agreement = judge_agreement(
        Evaluator(net, device=device), to_model_range(judged.images), torch.from_numpy(judged.labels)
    )
    return {
        "status": "ok" if results == len(combos) else f"partial (time budget: {results} of {len(combos)})",
        "size": size,
        "combinations": len(combos),
        "stepped": results,
        "failures": failures,
        "speed_settings": settings,
        "judge_random_weights": agreement,
        "seconds": round(time.perf_counter() - start, 1),
    }


# --- speed --------------------------------------------------------------------------------------------------


def images_per_second(gan, data, device, *, seconds: float, warmup: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(warmup):  # allocator, cuDNN autotuning, compilation
        train_step(gan, data, gen)
    gan.read_losses()
    warm = time.perf_counter() - t
    steps, t = 0, time.perf_counter()
    while True:
        for _ in range(10):
            train_step(gan, data, gen)
        steps += 10
        sync(device)
        if time.perf_counter() - t >= seconds:
            break
    elapsed = time.perf_counter() - t
    gan.read_losses()
    per_step = gan.config.batch_size * gan.config.n_critic  # real images D sees per G step
    return {
        "images_per_s": round(steps * per_step / elapsed, 1),
        "g_steps_per_s": round(steps / elapsed, 2),
        "warmup_s": round(warm, 2),
        "steps": steps,
    }


def step_ratio(args, device: torch.device) -> dict[str, Any]:
    """bench/train_step.py's comparison (the project's step vs the loop written out), rounds alternating."""
    from bench.train_step import bare_step

    size = 16 if args.tiny else 64
    config = scaled(load_preset("dcgan_bce"), args)
    ds = random_images(512, size)
    images = torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous().to(device)  # uint8 (N, 3, H, W)
    labels = torch.from_numpy(ds.labels).to(device)
    data = DeviceData(ds, device)
    torch.manual_seed(0)
    gan = build_gan(config, image_size=size, n_classes=N_CLASSES, device=device)
    gen_cpu = torch.Generator().manual_seed(0)
    gen_dev = torch.Generator(device=device).manual_seed(0)  # a hand-written loop would draw on the device
    steps = 5 if args.tiny else 20

    def project() -> None:
        for _ in range(steps):
            train_step(gan, data, gen_cpu)
        gan.read_losses()

    def bare() -> None:
        for _ in range(steps):
            bare_step(gan, images, labels, gen_dev, config.batch_size, config.z_dim)

    times: dict[str, list[float]] = {"project": [], "bare": []}
    for fn in (project, bare):
        fn()
    for r in range(3 if args.tiny else 7):
        for name, fn in (
            (("project", project), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("project", project))
        ):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t) / steps)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "preset": "dcgan_bce",
        "project_ms": round(1000 * med["project"], 3),
        "bare_ms": round(1000 * med["bare"], 3),
        "ratio": round(med["project"] / med["bare"], 4),
    }


def speed(args, device: torch.device, deadline: float) -> dict[str, Any]:
    """Compile-off rows and the step ratio first: compiling is the long, uninterruptible part."""
    size = 16 if args.tiny else 64
    data = DeviceData(random_images(256 if args.tiny else 4096, size), device)
    rows, skipped, ratio = [], [], None

    def row(name: str, compiled: bool) -> None:
        if time.perf_counter() > deadline:
            skipped.append(f"{name} compile={compiled}")
            return
        config = scaled(load_preset(name), args).replace(compile=compiled)
        torch.manual_seed(0)
        try:
            gan = build_gan(config, image_size=size, n_classes=N_CLASSES, device=device)
            measured = images_per_second(
                gan, data, device, seconds=1.0 if args.tiny else args.seconds, warmup=3 if args.tiny else 20
            )
        except Exception as e:  # e.g. no C compiler for inductor: keep the other rows
            measured = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
        rows.append({"preset": name, "compile": compiled, "batch": config.batch_size, **measured})

    for name in SPEED_PRESETS:
        row(name, False)
    if time.perf_counter() < deadline:
        ratio = step_ratio(args, device)
    if not args.tiny or args.compile_tiny:
        for name in SPEED_PRESETS:
            row(name, True)
    status = "ok" if not skipped else f"partial (time budget: skipped {', '.join(skipped)})"
    if args.tiny and not args.compile_tiny:
        status += "; compile=on not run at --tiny (compiling takes minutes on 2 CPU cores)"
    return {"status": status, "size": size, "rows": rows, "step_vs_bare": ratio}


# --- packing ------------------------------------------------------------------------------------------------


def worker(args) -> None:
    """One packed trial: build, warm up, say ready, wait for go, train for --seconds, print one JSON line."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    size = 16 if args.tiny else 64
    config = scaled(load_preset(PACK_PRESET), args)
    data = DeviceData(random_images(256 if args.tiny else 30000, size), device)  # a trial's own full copy
    torch.manual_seed(0)
    gan = build_gan(config, image_size=size, n_classes=N_CLASSES, device=device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3 if args.tiny else 20):
        train_step(gan, data, gen)
    gan.read_losses()
    print("ready", flush=True)
    sys.stdin.readline()
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < args.seconds:
        for _ in range(10):
            train_step(gan, data, gen)
        steps += 10
        sync(device)
    elapsed = time.perf_counter() - t
    gan.read_losses()
    out = {"images_per_s": steps * config.batch_size * config.n_critic / elapsed, "seconds": elapsed}
    if device.type == "cuda":
        out["max_allocated"] = torch.cuda.max_memory_allocated(device)
        out["max_reserved"] = torch.cuda.max_memory_reserved(device)
    print(json.dumps(out), flush=True)


class GpuMonitor:
    """nvidia-smi's utilisation and memory every 200 ms while packed trials run (none without nvidia-smi)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        exe = shutil.which("nvidia-smi")
        self.proc = None
        if exe:
            query = [
                exe,
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ]
            self.proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def stop(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait(timeout=5)
        if not self.samples:
            return {"samples": 0}
        util = [u for u, _ in self.samples]
        return {
            "samples": len(util),
            "util_mean": round(sum(util) / len(util), 1),
            "util_max": max(util),
            "mem_used_max_mib": max(m for _, m in self.samples),
        }


def pack_round(args, n: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.gpu",
        "--worker",
        "--device",
        args.device,
        "--seconds",
        str(args.pack_seconds),
    ]
    cmd += ["--tiny"] if args.tiny else []
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    monitor = None
    try:
        for p in procs:
            for line in p.stdout:  # anything a library prints before the handshake is skipped
                if line.strip() == "ready":
                    break
            else:
                raise RuntimeError(f"a packed trial did not start (exit {p.wait()})")
        monitor = GpuMonitor()
        for p in procs:  # all measure over the same window
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            lines = [line for line in p.stdout if line.startswith("{")]
            if not lines:
                raise RuntimeError(f"a packed trial printed no result (exit {p.wait()})")
            outs.append(json.loads(lines[-1]))
        gpu = monitor.stop()
    except BaseException:
        for p in procs:  # the others would wait for "go" or train on: stop them (our own children)
            p.kill()
        if monitor is not None:
            monitor.stop()
        raise
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    per = [o["images_per_s"] for o in outs]
    row = {
        "trials": n,
        "total_images_per_s": round(sum(per), 1),
        "per_trial_images_per_s": [round(x, 1) for x in per],
        "gpu": gpu,
    }
    if "max_allocated" in outs[0]:
        row["max_allocated_mib"] = [round(o["max_allocated"] / 2**20) for o in outs]
        row["max_reserved_mib"] = [round(o["max_reserved"] / 2**20) for o in outs]
    return row


def packing(args, device: torch.device, deadline: float) -> dict[str, Any]:
    rows, skipped = [], []
    for n in (1, 2) if args.tiny else (1, 2, 4, 8):
        if time.perf_counter() > deadline:
            skipped.append(n)
            continue
        rows.append(pack_round(args, n))
    if rows and rows[0]["total_images_per_s"]:
        one = rows[0]["total_images_per_s"]
        for r in rows:
            r["speedup_vs_one"] = round(r["total_images_per_s"] / one, 2)
    status = "ok" if not skipped else f"partial (time budget: skipped {skipped} trials)"
    return {"status": status, "preset": PACK_PRESET, "seconds_each": args.pack_seconds, "rows": rows}


# --- auto packing -------------------------------------------------------------------------------------------


def auto(args, device: torch.device, deadline: float) -> dict[str, Any]:
    from search import packing
    from spaces import load_space

    space = load_space(ROOT / "spaces" / ("smoke.yaml" if args.tiny else "clevr.yaml"))
    configs = packing.largest_configs(space)
    out: dict[str, Any] = {"space": space.path.name, "probe_configs": len(configs)}
    if device.type != "cuda":
        return {**out, "status": "skipped (the probe measures CUDA memory)"}
    measured = packing.probe(
        configs, size=64, n_classes=N_CLASSES, n_images=30000, judge_width=32, device=str(device)
    )
    fraction, why = packing.fraction(measured)
    return {
        **out,
        "status": "ok",
        "fraction": fraction,
        "why": why,
        "peak_gib": round(measured.peak / 2**30, 3),
        "context_gib": round(measured.context / 2**30, 3),
        "seconds": round(measured.seconds, 1),
    }


# --- search-equivalent --------------------------------------------------------------------------------------


def search(args, device: torch.device, deadline: float) -> dict[str, Any]:
    """The GPU budget's data, judge and first rung (grace epochs) for each preset, one after another."""
    from search.clevr import CLEVR
    from trainers.data import conditions_for, load_dataset, to_model_range
    from trainers.data.render import render_training_set
    from trainers.evaluator import FitConfig, fit
    from trainers.train import train

    budget = CLEVR.gpu
    scenes, size = (40, 16) if args.tiny else (budget.scenes, budget.size)
    fit_config = FitConfig(**({"width": 4, "epochs": 1} if args.tiny else dict(budget.evaluator_fit)))
    epochs = 1 if args.tiny else budget.grace_epochs
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-gpu-"))
    out: dict[str, Any] = {"scenes": scenes, "size": size, "epochs": epochs, "fit": str(fit_config)}
    t = time.perf_counter()
    workers = 1 if args.tiny else None  # a spawn pool costs more than 40 toy scenes
    root = render_training_set(
        work / "data", scenes=scenes, seed=0, size=size, workers=workers, progress=False
    )
    out["render_s"] = round(time.perf_counter() - t, 1)
    os.environ.setdefault("CGAN_SEARCH_CACHE", str(work / "cache"))
    ds = load_dataset(root, size=size, progress=False)
    t = time.perf_counter()
    judge, report = fit(
        ds.images,
        ds.labels,
        files=ds.files,
        classes=ds.classes,
        config=fit_config,
        device=device,
        progress=False,
    )
    out["fit_s"] = round(time.perf_counter() - t, 1)
    out["judge_heldout_acc"] = report.get("heldout_acc")
    out["judge_clears_floor"] = bool((report.get("heldout_acc") or 0) >= budget.evaluator_floor)
    n = min(len(ds), 2000)
    out["judge_trained"] = judge_agreement(
        judge, to_model_range(ds.images[-n:]), torch.from_numpy(ds.labels[-n:])
    )
    conditions = conditions_for(ds, root)
    rows, skipped, last = [], [], 0.0
    for name in budget.presets:
        if time.perf_counter() + last > deadline:
            skipped.append(name)
            continue
        t = time.perf_counter()
        result = train(
            scaled(load_preset(name), args),
            ds,
            epochs=epochs,
            out_dir=work / "runs" / name,
            evaluator=judge,
            conditions=conditions,
            device=device,
            progress=False,
        )
        last = time.perf_counter() - t
        m = result["metrics"]
        rows.append(
            {
                "preset": name,
                "wall_s": round(last, 1),
                "train_s": round(m.get("train_seconds", float("nan")), 1),
                "acc": round(m.get("acc", float("nan")), 4),
                "fid": round(m.get("fid", float("nan")), 1),
                "steps": result["step"],
            }
        )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    out["rows"] = rows
    out["presets_wall_s"] = round(sum(r["wall_s"] for r in rows), 1)
    out["status"] = "ok" if not skipped else f"partial (time budget: skipped {', '.join(skipped)})"
    return out


# --- report -------------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    statuses = {k: str(v.get("status", "")) for k, v in res.items() if isinstance(v, dict) and k in SHARES}
    broken = [
        f"| {k} | {st} | - |" for k, st in statuses.items() if st.startswith(("error", "skipped (time"))
    ]
    lines = [
        f"# bench/gpu.py — {res['date']}, {m['device_name']}, torch {m['torch']}, {m['cpus']} CPUs"
        + (" (--tiny: a CPU plumbing check, not a GPU figure)" if res["tiny"] else ""),
        "",
        "| section | what | figure |",
        "|---|---|---|",
    ]
    c = res.get("correctness")
    if c and "combinations" in c:
        lines.append(
            f"| correctness | one step, {c['combinations']} arch x loss x d_norm x d_cond combos at {c['size']}px | "
            f"{c['stepped'] - len(c['failures'])} / {c['stepped']} finite; settings {c['speed_settings']} ({c['status']}) |"
        )
        j = c["judge_random_weights"]
        lines.append(
            f"| correctness | judge accuracy CPU vs {j['device']}, {j['images']} images (random weights) | "
            f"{j['acc_cpu']:.6f} vs {j['acc_device']:.6f}: identical {j['identical']}, max prob diff {j['max_prob_diff']:.2e} |"
        )
    s = res.get("speed")
    if s and "rows" in s:
        for r in s["rows"]:
            figure = (
                f"{r['images_per_s']:,.0f} img/s ({r['g_steps_per_s']} G steps/s, warm-up {r['warmup_s']} s)"
                if "error" not in r
                else r["error"]
            )
            lines.append(
                f"| speed | {r['preset']} {s['size']}px batch {r['batch']}, compile {'on' if r['compile'] else 'off'} | {figure} |"
            )
        if s.get("step_vs_bare"):
            b = s["step_vs_bare"]
            lines.append(
                f"| speed | project step vs bare loop ({b['preset']}) | {b['ratio']}x ({b['project_ms']} vs {b['bare_ms']} ms) |"
            )
    p = res.get("packing")
    if p and "rows" in p:
        for r in p["rows"]:
            mem = f", peak alloc {max(r['max_allocated_mib'])} MiB/trial" if "max_allocated_mib" in r else ""
            gpu = f", GPU util {r['gpu']['util_mean']}%" if r.get("gpu") and "util_mean" in r["gpu"] else ""
            lines.append(
                f"| packing | {r['trials']} x {p['preset']} processes | total {r['total_images_per_s']:,.0f} img/s "
                f"({r.get('speedup_vs_one', '-')}x one), per trial {min(r['per_trial_images_per_s']):,.0f}-"
                f"{max(r['per_trial_images_per_s']):,.0f}{mem}{gpu} |"
            )
    a = res.get("auto")
    if a and "probe_configs" in a:
        figure = f"{a['fraction']:g}: {a['why']}" if a.get("fraction") else a["status"]
        lines.append(
            f"| auto | --gpus-per-trial auto, {a['space']} ({a['probe_configs']} probe configs) | {figure} |"
        )
    q = res.get("search")
    if q and "rows" in q:
        lines.append(
            f"| search | {q['scenes']} scenes at {q['size']}px: render, judge fit | {q['render_s']} s, {q['fit_s']} s; "
            f"held-out {q['judge_heldout_acc']:.4f} (clears 0.9: {q['judge_clears_floor']}) |"
        )
        j = q["judge_trained"]
        lines.append(
            f"| search | fitted judge CPU vs {j['device']}, {j['images']} real images | "
            f"{j['acc_cpu']:.6f} vs {j['acc_device']:.6f}: identical {j['identical']} |"
        )
        for r in q["rows"]:
            lines.append(
                f"| search | first rung: {r['preset']}, {q['epochs']} epochs | {r['wall_s']} s wall, acc {r['acc']}, FID {r['fid']} |"
            )
        lines.append(
            f"| search | first rung, all presets one after another | {q['presets_wall_s']} s ({q['status']}) |"
        )
    lines.extend(broken)
    lines.append(f"| run | wall time (budget {res['budget_s']} s) | {res['wall_s']} s |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes: a plumbing check that runs on a CPU")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    p.add_argument(
        "--out", type=Path, default=Path("bench/results/gpu.json"), help="the JSON; the .md beside it"
    )
    p.add_argument(
        "--sections", default="correctness,speed,packing,auto,search", help="comma-separated, in this order"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per speed row")
    p.add_argument(
        "--pack-seconds",
        type=float,
        default=None,
        help="measured seconds per packing round (6; 1 with --tiny)",
    )
    p.add_argument(
        "--max-combos", type=int, default=None, help="at most this many correctness combos (spread)"
    )
    p.add_argument("--compile-tiny", action="store_true", help="with --tiny, time torch.compile too")
    p.add_argument(
        "--work", help="keep the search section's data and runs here (default: a temp dir, removed)"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"python -m bench.gpu: error: --device {args.device}: no CUDA device here (use --device cpu --tiny)",
            file=sys.stderr,
        )
        return 2
    if args.tiny and args.max_combos is None:
        args.max_combos = 12
    if args.pack_seconds is None:
        args.pack_seconds = 1.0 if args.tiny else 6.0
    if device.type == "cpu":
        torch.set_num_threads(1)  # shared CPUs: one thread per process is faster than two spinning
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SHARES]
    if unknown:
        print(
            f"python -m bench.gpu: error: --sections: unknown {unknown} (valid: {', '.join(SHARES)})",
            file=sys.stderr,
        )
        return 2
    clock = Clock(args.budget)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tiny": args.tiny,
        "budget_s": args.budget,
        "machine": {
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU {platform.machine()}",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }
    runners = {"correctness": correctness, "speed": speed, "packing": packing, "auto": auto, "search": search}
    for name in sections:
        # The search section's render and judge fit cannot be cut short: start it only with time for them.
        need = 90.0 if name == "search" and not args.tiny else 0.0
        if clock.left() <= need:
            res[name] = {"status": f"skipped (time budget: {clock.left():.0f} s left, needs > {need:.0f} s)"}
            continue
        print(f"[bench.gpu] {name} ({clock.left():.0f} s left)", file=sys.stderr, flush=True)
        try:
            t = time.perf_counter()
            res[name] = runners[name](args, device, clock.deadline(SHARES[name]))
            res[name]["section_s"] = round(time.perf_counter() - t, 1)
        except Exception as e:  # one section's failure must not lose the others' figures
            res[name] = {
                "status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            }
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res["wall_s"] = round(time.perf_counter() - clock.start, 1)
    res["forbidden_imports"] = sorted(m for m in ("ray", "optuna", "mlflow") if m in sys.modules)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
