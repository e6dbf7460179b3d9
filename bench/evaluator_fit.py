"""Fit the default evaluator on synthetic i-CLEVR and record every figure docs/evaluator.md reports.

    .venv/bin/python bench/evaluator_fit.py --root data/iclevr-synth-64 --scenes 2000 --record data/evaluator-record.json

Steps (each skipped when its output exists, so a re-run only re-scores): render the training set, fit the
evaluator (the CLI's code path), render oracle images of test.json and new_test.json, score them, score uniform
noise under the same label sets, and fit + score a digits evaluator. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from trainers.data import load_dataset, spec_file
from trainers.data.render import render_label_sets, render_training_set
from trainers.evaluator import Evaluator, as_model_input, topk_accuracy
from trainers.evaluator.__main__ import main as evaluator_main


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 1)


def score(ev: Evaluator, data) -> float:
    return topk_accuracy(ev.scores(as_model_input(data.images)), data.labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("data/iclevr-synth-64"))
    p.add_argument("--scenes", type=int, default=2000, help="training scenes (3 images each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-draws", type=int, default=8, help="oracle renders per label set")
    p.add_argument("--fit-args", default="", help="extra arguments for `python -m trainers.evaluator fit`")
    p.add_argument("--digits", action="store_true", help="also fit and record the digits evaluator")
    p.add_argument("--record", type=Path, help="also write the record here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = ["--threads", str(torch.get_num_threads())]
    record: dict = {"scenes": args.scenes, "threads": torch.get_num_threads()}

    if not (args.root / "train.json").is_file():
        _, record["render_seconds"] = timed(
            render_training_set, args.root, scenes=args.scenes, seed=args.seed, size=64
        )
    ckpt = args.root / "evaluator.pt"
    if not ckpt.is_file():
        rc, record["fit_wall_seconds"] = timed(
            evaluator_main, ["fit", "--data", str(args.root), *threads, *args.fit_args.split()]
        )
        assert rc == 0, f"fit failed with exit code {rc}"
    ev = Evaluator.load(ckpt)
    side = ev.meta
    record |= {
        k: side[k]
        for k in ("heldout_acc", "macro_f1", "epochs", "width", "n_train", "n_val", "train_seconds")
    }
    record["worst_class_f1"] = min(side["per_class_f1"].items(), key=lambda kv: kv[1])

    rng = torch.Generator().manual_seed(args.seed)
    for split in ("test", "new_test"):
        out = args.root.parent / f"{args.root.name}-oracle-{split}"
        if not (out / "labels.json").is_file():
            render_label_sets(
                spec_file(f"{split}.json"), out, seed=args.seed + 1, size=64, draws=args.oracle_draws
            )
        oracle = load_dataset(out, size=64, progress=False)
        record[f"oracle_acc_{split}"] = score(ev, oracle)
        noise = torch.rand(len(oracle), 3, 64, 64, generator=rng) * 2 - 1
        record[f"noise_acc_{split}"] = topk_accuracy(ev.scores(noise), oracle.labels)
        k = oracle.labels.sum(1)
        record[f"chance_acc_{split}"] = float((k**2).sum() / k.sum() / oracle.labels.shape[1])

    if args.digits:
        dpath = args.root.parent / "digits" / "evaluator.pt"
        if not dpath.is_file():
            rc, record["digits_fit_wall_seconds"] = timed(
                evaluator_main, ["fit", "--data", "digits", "--out", str(dpath), *threads]
            )
            assert rc == 0
        dev = Evaluator.load(dpath)
        record["digits_heldout_acc"] = dev.meta["heldout_acc"]
        record["digits_train_seconds"] = dev.meta["train_seconds"]
        noise = torch.rand(1000, 3, 32, 32, generator=rng) * 2 - 1
        labels = np.eye(10, dtype=np.float32)[np.arange(1000) % 10]
        record["digits_noise_acc"] = topk_accuracy(dev.scores(noise), labels)

    text = json.dumps(record, indent=2)
    print(text)
    if args.record:
        args.record.write_text(text + "\n")


if __name__ == "__main__":
    main()
