"""Command line for evaluators: fit one on a dataset, score a labeled folder with one, or measure one on your data.

python -m trainers.evaluator fit --data DIR|FILE.parquet|digits [--out PATH] [--epochs E] [--width W] ...
python -m trainers.evaluator score --evaluator PATH --data DIR
python -m trainers.evaluator calibrate --evaluator PATH --data DIR [--sample N] [--home DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainers.cli import (
    OneLineParser,
    open_fraction,
    output_file,
    positive_float,
    positive_int,
    run_command,
    seed_int,
)
from trainers.cli import device as device_arg

# torch-free: the parser is built and argv checked before torch loads (each command imports what it runs)
from trainers.evaluator.recipe import DIGITS_SIZE, SAMPLE, FitConfig

DEFAULTS = FitConfig()


def default_out(data: str) -> Path:
    """DIR/evaluator.pt for a folder, FILE.evaluator.pt beside a pack, data/digits/evaluator.pt for digits."""
    if data == "digits":
        return Path("data") / "digits" / "evaluator.pt"
    path = Path(data)
    return path / "evaluator.pt" if path.is_dir() else path.with_suffix(".evaluator.pt")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m trainers.evaluator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser(
        "fit", help="train an evaluator with a held-out split; write checkpoint + JSON sidecar"
    )
    f.add_argument(
        "--data", required=True, help="dataset folder (i-CLEVR layout), packed .parquet, or 'digits'"
    )
    f.add_argument(
        "--out", type=output_file(), help="checkpoint path (default: DIR/evaluator.pt); sidecar is PATH.json"
    )
    f.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help=f"default {DEFAULTS.epochs}")
    f.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help=f"64 = resnet18; default {DEFAULTS.width}, or --init's width",
    )
    f.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size, help=f"default {DEFAULTS.batch_size}"
    )
    f.add_argument(
        "--lr", type=positive_float, default=DEFAULTS.lr, help=f"OneCycle peak, default {DEFAULTS.lr}"
    )
    f.add_argument("--seed", type=seed_int, default=DEFAULTS.seed)
    f.add_argument(
        "--val-fraction",
        type=open_fraction,
        default=DEFAULTS.val_fraction,
        help="held out (by scene), in (0, 1)",
    )
    f.add_argument("--max-train", type=positive_int, default=None, help="train on at most this many images")
    f.add_argument(
        "--size", type=positive_int, default=None, help=f"load resolution (default 64; digits {DIGITS_SIZE})"
    )
    f.add_argument(
        "--init",
        type=Path,
        default=None,
        help="warm-start from this evaluator checkpoint (its width and classes); fit it on fresh scenes "
        "(another render seed) so the held-out split stays unseen",
    )
    f.add_argument("--device", type=device_arg, default=None, help="default: cuda if available, else cpu")
    f.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: all usable cores)"
    )
    s = sub.add_parser("score", help="print the top-k accuracy of an evaluator on a labeled folder")
    s.add_argument("--evaluator", type=Path, required=True, help="checkpoint (official or project)")
    s.add_argument(
        "--data", required=True, help="folder with labels.json/train.json, a .parquet, or 'digits'"
    )
    s.add_argument("--size", type=positive_int, default=None, help="load resolution (default 64; digits 32)")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--device", type=device_arg, default=None)
    c = sub.add_parser(
        "calibrate",
        help="measure a judge (e.g. the official file, which has no sidecar) on your labelled images, as a "
        "search does before trials start, and cache the figure for the search",
    )
    c.add_argument("--evaluator", type=Path, required=True, help="checkpoint (official or project)")
    c.add_argument("--data", required=True, help="dataset folder (i-CLEVR layout), a .parquet, or 'digits'")
    c.add_argument(
        "--sample", type=positive_int, default=SAMPLE, help="images scored, a fixed stratified sample"
    )
    c.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the search home whose cache receives the figure (default: $CGAN_SEARCH_HOME or ~/.cgan-search)",
    )
    c.add_argument("--batch-size", type=positive_int, default=256)
    c.add_argument("--device", default=None)
    return parser


def _load(data: str, size: int | None):
    from trainers.data import load_dataset  # lazy: scoring APIs must not pay for the data stack

    return load_dataset(data, size=size or (DIGITS_SIZE if data == "digits" else 64))


def run_fit(args: argparse.Namespace) -> str:
    import torch

    from trainers.evaluator.fit import fit
    from trainers.evaluator.model import Evaluator, EvaluatorError

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    init = Evaluator.load(args.init, device="cpu") if args.init is not None else None
    if init is not None and args.width not in (None, init.width):
        raise EvaluatorError(f"--width {args.width} contradicts --init {args.init} (width {init.width})")
    width = args.width or (init.width if init is not None else DEFAULTS.width)
    config = FitConfig(
        width=width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        max_train=args.max_train,
        seed=args.seed,
    )
    out = args.out or default_out(args.data)
    ds = _load(args.data, args.size)
    if init is not None:
        _check_init(args.init, init, ds)
    ev, report = fit(
        ds.images,
        ds.labels,
        files=ds.files,
        classes=ds.classes,
        config=config,
        device=args.device,
        init=init,
    )
    meta = {"data": str(args.data), "data_fingerprint": ds.fingerprint, "data_size": ds.size, **report}
    if init is not None:
        # the whole lineage, so the sidecar says what the weights saw and what they cost in all
        meta["init"] = {
            "path": str(args.init),
            **{k: init.meta.get(k) for k in INIT_KEYS},
        }
    ev.save(out, meta)
    return (
        f"evaluator written to {out} (+ .json): held-out top-k accuracy {report['heldout_acc']:.4f} on "
        f"{report['n_val']} images, {report['n_train']} train images x {report['epochs']} epochs in "
        f"{report['train_seconds']:.0f} s on {report['device']}"
    )


INIT_KEYS = ("checkpoint_sha256", "data", "data_fingerprint", "heldout_acc", "cpu_seconds", "init")


def _check_init(path: Path, init, ds) -> None:
    """A warm start must share the dataset's classes and must not have trained on its held-out scenes."""
    from trainers.evaluator.model import EvaluatorError

    if init.n_classes != ds.n_classes or (
        "classes" in init.meta and tuple(init.meta["classes"]) != ds.classes
    ):
        raise EvaluatorError(
            f"--init {path}: its {init.n_classes} classes do not match the data's {ds.n_classes}"
        )
    if init.meta.get("data_fingerprint") == ds.fingerprint:
        raise EvaluatorError(
            f"--init {path} was fitted on this very dataset: its held-out split would not be unseen "
            "(render fresh scenes with another --seed)"
        )


def run_score(args: argparse.Namespace) -> str:
    import numpy as np
    import torch

    from trainers.evaluator.calibrate import check_matches
    from trainers.evaluator.metrics import topk_accuracy
    from trainers.evaluator.model import Evaluator, as_model_input

    ev = Evaluator.load(args.evaluator, device=args.device)
    ds = _load(args.data, args.size)
    check_matches(args.evaluator, ev, ds.classes, str(args.data))
    bs = args.batch_size
    probs = torch.cat(
        [ev.scores(as_model_input(ds.images[i : i + bs]), batch_size=bs) for i in range(0, len(ds), bs)]
    )
    acc = topk_accuracy(probs, ds.labels)
    return f"accuracy {acc:.4f} on {len(ds)} images ({int(np.sum(ds.labels))} labels) of {args.data}"


def run_calibrate(args: argparse.Namespace) -> str:
    from search.options import default_home  # the search's own home: lazy, and it needs no ray or mlflow
    from trainers.evaluator.calibrate import calibrate, calibration_dir, describe, judge_data
    from trainers.evaluator.model import Evaluator

    home = (args.home.expanduser().resolve() if args.home else None) or default_home()
    os.environ.setdefault("CGAN_SEARCH_CACHE", str(home / "cache"))  # the packs the search will read too
    Evaluator.load(args.evaluator, device="cpu")  # a bad file is refused before the data is read
    data = args.data if args.data == "digits" else str(Path(args.data).expanduser().resolve())
    record = calibrate(
        args.evaluator.expanduser().resolve(),
        judge_data(data),
        data_spec=data,
        cache_dir=calibration_dir(home),
        sample=args.sample,
        batch_size=args.batch_size,
        device=args.device,
    )
    where = "read from" if record["cached"] else "cached in"
    return f"{args.evaluator}: {describe(record)} ({where} {record['cache']})"


COMMANDS = {"fit": run_fit, "score": run_score, "calibrate": run_calibrate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from trainers.data import DataError
    from trainers.evaluator.model import EvaluatorError

    command = COMMANDS[args.command]
    return run_command(lambda: print(command(args)), (EvaluatorError, DataError), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
