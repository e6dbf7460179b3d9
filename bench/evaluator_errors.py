"""Where an evaluator misses: its held-out errors by object count, class and confusion, plus a contact sheet.

    .venv/bin/python bench/evaluator_errors.py --data data/iclevr-synth-64-s40k-seed1 \
        --evaluator data/iclevr-synth-64-s40k-seed1/evaluator.pt [--sheet docs/evaluator-misses.png]

The held-out split is the one `fit` used (same seed and fraction, by scene), so scoring a checkpoint fitted on
another dataset (e.g. the --init of a warm start) on this split scores it on scenes it never saw either.
Prints one JSON record.
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch
from PIL import Image

from trainers.data import load_dataset
from trainers.evaluator import Evaluator, as_model_input, topk_accuracy
from trainers.evaluator.fit import FitConfig, split_indices


def misses(probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Per image: (true classes not among its top k, top-k classes that are not true), k = its label count."""
    out = []
    for p, y in zip(probs, labels, strict=True):
        true = set(torch.nonzero(y).flatten().tolist())
        top = set(torch.topk(p, len(true)).indices.tolist())
        out.append((sorted(true - top), sorted(top - true)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--evaluator", required=True)
    parser.add_argument("--val-fraction", type=float, default=FitConfig.val_fraction)
    parser.add_argument("--seed", type=int, default=FitConfig.seed)
    parser.add_argument("--sheet", help="PNG of the first 24 missed images, 2x upscaled")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.data, size=64)
    _, val, split = split_indices(ds.files, len(ds), val_fraction=args.val_fraction, seed=args.seed)
    ev = Evaluator.load(args.evaluator, device="cpu")
    probs = torch.cat(
        [ev.scores(as_model_input(ds.images[val[i : i + 512]])) for i in range(0, len(val), 512)]
    )
    labels = torch.as_tensor(ds.labels[val], dtype=torch.float32)
    per_image = misses(probs, labels)
    k = labels.sum(1).int().tolist()
    name = ds.classes
    missed, pairs = collections.Counter(), collections.Counter()
    by_k, labels_by_k = collections.Counter(), collections.Counter()
    for kk, (m, w) in zip(k, per_image, strict=True):
        labels_by_k[kk] += kk
        by_k[kk] += len(m)
        missed.update(name[c] for c in m)
        if len(m) == 1:
            pairs[f"{name[m[0]]} -> {name[w[0]]}"] += 1
    record = {
        "data": args.data,
        "evaluator": args.evaluator,
        "split": split,
        "heldout_images": len(val),
        "acc": round(topk_accuracy(probs, labels), 4),
        "miss_rate_by_objects": {kk: round(by_k[kk] / labels_by_k[kk], 4) for kk in sorted(labels_by_k)},
        "missed_classes": dict(missed.most_common(8)),
        "confusions": dict(pairs.most_common(10)),
    }
    print(json.dumps(record, indent=1))
    if args.sheet:
        bad = [int(i) for i, (m, _) in zip(val, per_image, strict=True) if m][:24]
        sheet = Image.new("RGB", (8 * 130, 3 * 130), "white")
        for j, i in enumerate(bad):
            tile = Image.fromarray(np.asarray(ds.images[i])).resize((128, 128), Image.NEAREST)
            sheet.paste(tile, ((j % 8) * 130, (j // 8) * 130))
        sheet.save(args.sheet)


if __name__ == "__main__":
    main()
