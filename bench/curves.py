"""Learning curves: N configurations of a space plus every preset, k seeds each, evaluated after every epoch.

    nice -n 19 python bench/curves.py --data digits --space digits.yaml --n 48 --seeds 2 --epochs 20
    nice -n 19 python bench/curves.py --data synthetic --scenes 10000 --images 6000 --space smoke.yaml \
        --n 24 --seeds 2 --epochs 4 --home /tmp/ed-home

Every run trains to the full --epochs (no early stopping), the way a search's trial does (trainers.train,
one evaluation per epoch, the search's data, judge and condition sets from search.prepare), so that
bench/simulate.py can replay any scheduler on the curves offline. Writes OUT/curves-<dataset>-<size>.parquet:
one row per (config, seed, epoch) with every metric the trial reports (acc_val once the condition sets
have a val set, acc_test, ..., fid), training and evaluation CPU-seconds, the config as JSON, and the
machine, command and data in the file's metadata (`read_table`). Runs finished so far are kept in
HOME/curves/<name>.jsonl, so an interrupted table continues where it stopped with the same command.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainers.cli import OneLineParser, positive_int, run_command

SEED_BASE = 1000  # space samples are drawn with seeds SEED_BASE + i: not the training seeds 0..k-1
SCHEMA = "curves@1"

_WORKER: dict[str, Any] = {}  # per worker process: data, judge, conditions (loaded once)


def dataset_name(data: str) -> str:
    return "digits" if data == "digits" else "iclevr" if data == "synthetic" else Path(data).stem


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "host_cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trainers", "search", "spaces"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def configurations(space_path: Path, n: int, presets: list[str]) -> list[dict[str, Any]]:
    """[{config_id, source, config}]: the presets first (named), then n samples of the space."""
    from spaces import load_space
    from trainers.config import TrainConfig, load_preset

    space = load_space(space_path)
    out = [
        {"config_id": f"preset:{p}", "source": "preset", "config": load_preset(p).to_dict()} for p in presets
    ]
    for i in range(n):
        sample = space.sample(SEED_BASE + i)
        config = TrainConfig.from_dict(sample).to_dict()  # the trial's exact config (defaults filled in)
        out.append({"config_id": f"space:{i:03d}", "source": space_path.name, "config": config})
    return out


def presets_for(choice: str, space_path: Path, names: list[str]) -> list[str]:
    """'fitting': the presets the space can express (what a search of it enqueues, search.driver's rule);
    'all', 'none', or a comma list."""
    from spaces import load_space
    from trainers.config import load_preset

    if choice == "fitting":
        space = load_space(space_path)
        return [n for n in names if not space.fit(load_preset(n).to_dict()).misfits]
    if choice in ("all", "none"):
        return list(names) if choice == "all" else []
    return choice.split(",")


def _init_worker(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the table is a CPU measurement, as the cpu budgets are
    _WORKER.update(load_inputs(spec, log=lambda _msg: None))


def load_inputs(spec: dict[str, Any], *, log) -> dict[str, Any]:
    """The search's own inputs (search.prepare): the data, its judge (fitted once and cached in the home, or
    found there) and the condition sets; --images keeps the first N images of the data."""
    from search.prepare import ensure_evaluator, load_data
    from trainers.data import ImageSet, conditions_for
    from trainers.evaluator import Evaluator
    from trainers.evaluator.protocol import with_val

    home = Path(spec["home"])
    os.environ.setdefault("CGAN_SEARCH_CACHE", str(home / "cache"))  # packs in the home, as search.prepare
    data, root = load_data(spec["data"], home=home, size=spec["size"], scenes=spec["scenes"], log=log)
    path, meta = ensure_evaluator(
        data,
        explicit=None,
        home=home,
        fit_overrides=dict(spec["evaluator_fit"]),
        floor=spec["floor"],
        spec=str(root or spec["data"]),
        log=log,
    )
    # the search's own sets: val (what its decisions read, acc_val) beside the test sets (acc, acc_<set>)
    conditions = with_val(conditions_for(data, root), data.labels)
    full = len(data)
    if spec["images"] and spec["images"] < full:
        k = spec["images"]
        data = ImageSet(
            images=data.images[:k],
            labels=data.labels[:k],
            files=data.files[:k],
            classes=data.classes,
            fingerprint=f"{data.fingerprint}-first{k}",
            name=data.name,
        )
    return {
        "data": data,
        "evaluator": Evaluator.load(path, device="cpu"),
        "evaluator_path": str(path),
        "evaluator_meta": meta,
        "conditions": conditions,
        "images_full": full,
    }


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (config, seed) for the full epochs; one record per evaluation. A diverged run ends with a
    row of acc 0 at the next epoch, as the search's trial reports it (search/trial.py)."""
    from trainers.config import TrainConfig
    from trainers.train import Diverged, train

    rows: list[dict[str, Any]] = []
    last_eval = [time.process_time()]

    def record(report) -> None:
        now = time.process_time()
        m = report.metrics
        rows.append(
            {
                "epoch": report.epoch,
                "step": report.step,
                **{k: float(v) for k, v in m.items() if k.startswith("acc") or k in ("fid", "diversity")},
                "train_cpu_s": float(m["train_cpu_seconds"]),
                "cpu_s": now - _WORKER["t0"],  # this run's process CPU so far: training + evaluation
                "diverged": 0,
            }
        )
        last_eval[0] = now

    _WORKER["t0"] = time.process_time()
    error = None
    with tempfile.TemporaryDirectory(prefix="curves-") as scratch:
        try:
            train(
                TrainConfig.from_dict(job["config"]),
                _WORKER["data"],
                epochs=job["epochs"],
                out_dir=Path(scratch),
                evaluator=_WORKER["evaluator"],
                conditions=_WORKER["conditions"],
                callback=record,
                eval_every=1,
                device="cpu",
                seed=job["seed"],
                progress=False,
            )
        except Diverged as err:
            prev = rows[-1]["epoch"] if rows else 0
            keys = [k for k in (rows[0] if rows else {}) if k.startswith("acc")] or ["acc"]
            rows.append(
                {
                    "epoch": prev + 1,
                    "step": err.step,
                    **dict.fromkeys(keys, 0.0),
                    "fid": float("inf"),
                    "diverged": 1,
                    "cpu_s": time.process_time() - _WORKER["t0"],
                }
            )
        except Exception as err:  # noqa: BLE001 - a recipe the trainer refuses is a result of the table
            error = f"{type(err).__name__}: {err}"
    return {**{k: job[k] for k in ("config_id", "source", "seed", "config")}, "rows": rows, "error": error}


def write_table(runs: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for run in sorted(runs, key=lambda r: (r["config_id"], r["seed"])):
        config = json.dumps(run["config"], sort_keys=True)
        for row in run["rows"]:
            records.append(
                {
                    "config_id": run["config_id"],
                    "source": run["source"],
                    "seed": run["seed"],
                    **row,
                    "config": config,
                    "error": run["error"],
                }
            )
        if not run["rows"]:
            records.append(
                {
                    "config_id": run["config_id"],
                    "source": run["source"],
                    "seed": run["seed"],
                    "epoch": 0,
                    "config": config,
                    "error": run["error"],
                }
            )
    table = pa.Table.from_pylist(records)
    table = table.replace_schema_metadata({"curves": json.dumps(meta, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return len(records)


def read_table(path: str | Path):
    """(pandas DataFrame, metadata dict) of a curve table."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"curves", b"{}"))
    return table.to_pandas(), meta


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python bench/curves.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default="digits", help="'digits', 'synthetic' (i-CLEVR, search.prepare), a folder"
    )
    p.add_argument("--space", default="digits.yaml", help="a file under spaces/ or a path")
    p.add_argument("--n", type=positive_int, default=48, help="configurations sampled from the space")
    p.add_argument(
        "--presets",
        default="fitting",
        help="'fitting' (those the space can express, as a search enqueues them), 'all', 'none', a,b",
    )
    p.add_argument("--seeds", type=positive_int, default=2, help="training seeds per configuration (0..k-1)")
    p.add_argument("--epochs", type=positive_int, default=20, help="every run's full budget")
    p.add_argument("--size", type=positive_int, default=32)
    p.add_argument("--scenes", type=int, default=10000, help="synthetic scenes (the embedded default: 10000)")
    p.add_argument("--images", type=int, default=0, help="train on the first N images only (0: all)")
    p.add_argument(
        "--evaluator-fit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge recipe overrides, as the entry's budget (i-CLEVR cpu: epochs=12)",
    )
    p.add_argument(
        "--floor",
        type=float,
        default=None,
        help="the judge's held-out floor (default: the cpu budget's, 0.85 i-CLEVR, 0.9 otherwise)",
    )
    p.add_argument("--home", type=Path, default=Path.home() / ".cgan-search", help="cache of data and judges")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs at once")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per run")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--limit", type=int, default=0, help="stop after this many new runs (0: all); for tests")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        import yaml

        from search.options import _space_path  # the entries' own space resolution (a name or a path)
        from trainers.config import preset_names

        space = Path(_space_path(args.space))
        presets = presets_for(args.presets, space, preset_names())
        name = f"curves-{dataset_name(args.data)}-{args.size}"
        spec = {
            "data": args.data,
            "home": str(args.home),
            "size": args.size,
            "scenes": args.scenes,
            "images": args.images,
            "evaluator_fit": [
                (k, yaml.safe_load(v)) for k, _, v in (s.partition("=") for s in args.evaluator_fit)
            ],
            "floor": args.floor if args.floor is not None else 0.85 if args.data == "synthetic" else 0.9,
            "threads": args.threads,
        }
        inputs = load_inputs(spec, log=print)  # fits/renders once here, not in every worker
        configs = configurations(space, args.n, list(presets))
        jobs = [
            {**c, "seed": s, "epochs": args.epochs}
            for s in range(args.seeds)
            for c in configs  # seed 0 of everything first: a table cut short still covers every config
        ]
        progress = args.home / "curves" / f"{name}.jsonl"
        progress.parent.mkdir(parents=True, exist_ok=True)
        key = {k: spec[k] for k in ("data", "size", "scenes", "images")} | {
            "epochs": args.epochs,
            "space": str(space),
        }
        runs = []
        if progress.is_file():
            for line in progress.read_text().splitlines():
                run = json.loads(line)
                if run.get("key") == key:
                    runs.append(run)
        done = {(r["config_id"], r["seed"]) for r in runs}
        todo = [j for j in jobs if (j["config_id"], j["seed"]) not in done]
        if args.limit:
            todo = todo[: args.limit]
        meta = {
            "schema": SCHEMA,
            "dataset": dataset_name(args.data),
            "data": args.data,
            "size": args.size,
            "scenes": args.scenes if args.data == "synthetic" else None,
            "images": len(inputs["data"]),
            "images_full": inputs["images_full"],
            "epochs": args.epochs,
            "seeds": args.seeds,
            "space": space.name,
            "presets": list(presets),
            "n_space": args.n,
            "conditions": {k: len(v) for k, v in inputs["conditions"].items()},
            "judge": {
                "path": inputs["evaluator_path"],
                "acc": inputs["evaluator_meta"].get("judge_acc"),
                "sha256": inputs["evaluator_meta"].get("checkpoint_sha256"),
            },
            "machine": machine(),
            "threads": args.threads,
            "jobs": args.jobs,
            "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
            "commit": git_commit(),
        }
        print(
            f"{name}: {len(configs)} configs x {args.seeds} seeds x {args.epochs} epochs; "
            f"{len(done)} runs done, {len(todo)} to go ({len(inputs['data'])} images)",
            flush=True,
        )
        del inputs
        out = args.out / f"{name}.parquet"
        ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with cf.ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=_init_worker, initargs=(spec,)
        ) as pool:
            futures = [pool.submit(run_one, j) for j in todo]
            try:
                for i, fut in enumerate(cf.as_completed(futures), 1):
                    run = {**fut.result(), "key": key}
                    runs.append(run)
                    with progress.open("a") as f:
                        f.write(json.dumps(run) + "\n")
                    meta["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                    meta["runs"] = len(runs)
                    write_table(runs, out, meta)
                    last = run["rows"][-1] if run["rows"] else {}
                    print(
                        f"[{i}/{len(todo)}] {run['config_id']} seed {run['seed']}: "
                        f"acc {last.get('acc', float('nan')):.3f} after {last.get('epoch', 0)} epochs, "
                        f"{last.get('cpu_s', 0):.0f} CPU-s" + (f" ({run['error']})" if run["error"] else ""),
                        flush=True,
                    )
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                raise
        if runs:
            write_table(runs, out, meta)
        print(f"wrote {out} ({len(runs)} runs)")
        return 0

    return run_command(body, (ValueError, OSError), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
