"""The evaluation protocol every trainer uses: n seeded draws per condition -> acc, acc_std, fid, diversity.

Label-conditioned generators go through `evaluate_generator`, InfoGAN (codes instead of labels) through
`evaluate_codes`, which matches code values to classes one-to-one (Hungarian: `match_codes`), as Chen et al.
2016 scored MNIST; both return exactly `metric_keys(conditions)`, so every trial of a search reports the same
numbers (a multi-objective search on acc and fid needs both from every trial).
"""

from __future__ import annotations

import functools
import math
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from trainers.evaluator.metrics import FeatureStats, feature_stats, frechet_distance, topk_accuracy
from trainers.evaluator.model import Evaluator, as_model_input

GenerateFn = Callable[[Tensor, torch.Generator], Tensor]  # (labels (B, C), cpu generator) -> (B, 3, H, W)


VAL = "val"  # the condition set every search decision reads (acc_val); never part of the reported acc
VAL_SEED = 0  # fixed, not --seed: every search on the same data decides on the same label sets
VAL_FACTOR = 3  # val rows per row of the largest reported set: 96 for i-CLEVR's 32, 30 for 10 digits


def metric_keys(conditions: Iterable[str]) -> tuple[str, ...]:
    """The keys both protocols return for these condition set names (a mapping's keys, or the names):
    acc_<name> for each, acc / acc_std over the reported sets (all but `VAL`), acc_val_std when `VAL` is
    one of them, fid, diversity."""
    names = tuple(conditions)
    val_std = ("acc_val_std",) if VAL in names else ()
    return (*(f"acc_{name}" for name in names), "acc", "acc_std", *val_std, "fid", "diversity")


def val_conditions(
    train_labels: np.ndarray | Tensor,
    tests: Mapping[str, np.ndarray | Tensor],
    *,
    seed: int = VAL_SEED,
    factor: int = VAL_FACTOR,
) -> np.ndarray:
    """The validation condition set, (N, C) float32 multi-hot, N = factor x the largest set of `tests`.

    Multi-label data (i-CLEVR): label sets drawn like the training labels: the number of objects from the
    object-count mix of `train_labels` (the rows of the data's train.json), then that many distinct classes
    (shape+colour pairs, so none twice in a set) uniformly; a set equal to a row of any test set is drawn
    again. Rows may repeat (only 18 one-object sets lie outside test.json, and the mix asks for ~32 of 96):
    each row is drawn with its own noise. Deterministic in (train_labels' count mix, tests, seed).
    Single-label data (digits), where every possible label set is a row of the test set: each class
    repeated factor x (test rows / classes) times (30 rows for 10 digits). These are the test set's labels,
    but scored on other images: `evaluate_generator` seeds each set's noise by its name (`draw_seed`), so
    the draws a decision reads are never the draws the reported accuracy is measured on.
    """
    labels = np.asarray(train_labels) > 0.5
    n_classes = labels.shape[1]
    test_rows = [np.asarray(t) > 0.5 for t in tests.values()]
    if not test_rows or any(t.ndim != 2 or t.shape[1] != n_classes for t in test_rows):
        raise ValueError(f"tests must be non-empty (N, {n_classes}) sets, got {[t.shape for t in test_rows]}")
    n = factor * max(len(t) for t in test_rows)
    taken = {tuple(np.flatnonzero(row)) for t in test_rows for row in t}
    counts = np.bincount(labels.sum(1), minlength=n_classes + 1)
    counts[0] = 0  # an image without a label is no condition
    if counts.sum() == 0:
        raise ValueError("train_labels has no labelled row")
    sizes = np.flatnonzero(counts)
    free = sum(math.comb(n_classes, int(k)) for k in sizes) - sum(len(key) in sizes for key in taken)
    if free < 1:  # single-label data: no label set is left outside the test set
        reps = math.ceil(n / n_classes)
        return np.repeat(np.eye(n_classes, dtype=np.float32), reps, axis=0)[: reps * n_classes]
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, ...]] = []
    while len(rows) < n:
        k = int(rng.choice(sizes, p=counts[sizes] / counts.sum()))
        key = tuple(sorted(int(c) for c in rng.choice(n_classes, size=k, replace=False)))
        if key not in taken:
            rows.append(key)
    out = np.zeros((n, n_classes), dtype=np.float32)
    for i, key in enumerate(rows):
        out[i, list(key)] = 1.0
    return out


def with_val(
    conditions: Mapping[str, np.ndarray | Tensor],
    train_labels: np.ndarray | Tensor,
    *,
    seed: int = VAL_SEED,
) -> dict[str, np.ndarray | Tensor]:
    """``{"val": val_conditions(train_labels, conditions, seed=seed), **conditions}``: what a search scores
    every trial on (it decides on acc_val and reports acc, the mean of the other sets)."""
    if VAL in conditions:
        raise ValueError(f"conditions already has a {VAL!r} set")
    return {VAL: val_conditions(train_labels, conditions, seed=seed), **conditions}


def draw_seed(seed: int, draw: int, name: str) -> int:
    """The noise seed of one (seed, draw, condition set): independent of the other sets and of batch_size order."""
    return int(np.random.SeedSequence([seed, draw, zlib.crc32(name.encode())]).generate_state(1)[0])


def real_feature_stats(
    evaluator: Evaluator, real: Tensor | np.ndarray, *, batch_size: int = 256
) -> FeatureStats:
    """Feature statistics of real images (uint8 (N, H, W, 3) or float (N, 3, H, W) in [-1, 1]).

    The last result is cached on the evaluator for as long as the same, unmodified array is passed: a trainer
    that evaluates every few epochs against the same real set pays for its forward passes once.
    """
    version = getattr(real, "_version", None)
    cache = evaluator._real_cache
    if cache is not None and cache[0]() is real and cache[1] == version:
        return cache[2]
    feats = [
        evaluator.features(as_model_input(real[i : i + batch_size]), batch_size=batch_size)
        for i in range(0, len(real), batch_size)
    ]
    stats = feature_stats(torch.cat(feats))
    try:
        evaluator._real_cache = (weakref.ref(real), version, stats)
    except TypeError:  # an object that cannot be weakly referenced is simply not cached
        evaluator._real_cache = None
    return stats


def _pairwise_mean(feats: Tensor) -> Tensor:
    """(D draws, N rows, F) -> (N,) mean L2 distance over the D*(D-1)/2 pairs of draws of each row."""
    x = feats.transpose(0, 1).double()  # (N, D, F)
    dist = torch.cdist(x, x)  # (N, D, D)
    d = x.shape[1]
    upper = torch.triu(torch.ones(d, d, dtype=torch.bool), diagonal=1)
    return dist[:, upper].mean(dim=1)


def evaluate_generator(
    generate: GenerateFn,
    evaluator: Evaluator,
    conditions: Mapping[str, Tensor | np.ndarray],
    *,
    real: Tensor | np.ndarray | None = None,
    n_draws: int = 8,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """Generate every condition row ``n_draws`` times from fixed noise and judge the results.

    ``generate(labels, generator)`` gets labels (B, C) on the evaluator's device and a CPU ``torch.Generator``
    seeded by ``draw_seed(seed, draw, name)``: it must take all its noise from that generator (e.g.
    ``torch.randn(..., generator=g).to(device)``) so the same seeds give the same images on any device.
    It returns (B, 3, H, W) images in [-1, 1]; a set larger than batch_size is generated in consecutive
    chunks drawn from one generator. Put the generator network in the mode you want judged before calling.

    Returns ``acc_<name>`` (official top-k accuracy of the whole set, mean over draws), ``acc`` (mean of those
    over the reported sets: every set but `VAL`), ``acc_std`` (population std over draws of the per-draw mean
    over the reported sets; 0 for one draw), ``acc_val_std`` (the same for the `VAL` set alone, when given),
    ``fid`` (Frechet distance in the evaluator's penultimate features between the reported sets' generated
    images and ``real``; nan without ``real``) and ``diversity`` (mean pairwise feature distance between the
    draws of one condition row, averaged over the reported sets' rows; ~0 for a collapsed generator, nan for
    one draw). Keys in `metric_keys` order.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    if not conditions:
        raise ValueError("conditions is empty")
    labels = {}
    for name, cond in conditions.items():
        t = torch.as_tensor(cond, dtype=torch.float32).cpu()
        if t.dim() != 2 or t.shape[1] != evaluator.n_classes or len(t) == 0:
            raise ValueError(
                f"conditions[{name!r}] must be (N, {evaluator.n_classes}) for this evaluator, got {tuple(t.shape)}"
            )
        labels[name] = t
    accs: dict[str, list[float]] = {name: [] for name in labels}
    feats: dict[str, list[Tensor]] = {name: [] for name in labels}  # per draw: (N, F)
    with torch.inference_mode():
        for draw in range(n_draws):
            for name, lab in labels.items():
                gen = torch.Generator().manual_seed(draw_seed(seed, draw, name))
                probs, fs = [], []
                for chunk in lab.split(batch_size):
                    images = generate(chunk.to(evaluator.device), gen)
                    if (
                        not torch.is_tensor(images)
                        or images.dim() != 4
                        or images.shape[:2] != (len(chunk), 3)
                    ):
                        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
                        raise ValueError(
                            f"generate returned {got} for {len(chunk)} labels; expected ({len(chunk)}, 3, H, W)"
                        )
                    p, f = evaluator.scores_and_features(images, batch_size=batch_size)
                    probs.append(p)
                    fs.append(f)
                accs[name].append(topk_accuracy(torch.cat(probs), lab))
                feats[name].append(torch.cat(fs))
        real_stats = real_feature_stats(evaluator, real, batch_size=batch_size) if real is not None else None

    reported = _reported(labels)
    per_draw = np.mean([accs[name] for name in reported], axis=0)  # (n_draws,)
    result = {f"acc_{name}": float(np.mean(accs[name])) for name in labels}
    result["acc"] = float(np.mean([result[f"acc_{name}"] for name in reported]))
    result["acc_std"] = float(np.std(per_draw))
    if VAL in labels:
        result["acc_val_std"] = float(np.std(accs[VAL]))
    all_feats = torch.cat([f for name in reported for f in feats[name]])
    result["fid"] = (
        frechet_distance(feature_stats(all_feats), real_stats) if real_stats is not None else math.nan
    )
    if n_draws > 1:
        result["diversity"] = float(
            torch.cat([_pairwise_mean(torch.stack(feats[name])) for name in reported]).mean()
        )
    else:
        result["diversity"] = math.nan
    return {key: result[key] for key in metric_keys(labels)}


def _reported(names: Iterable[str]) -> list[str]:
    """The sets acc, acc_std, fid and diversity are measured on: all but `VAL` (FID depends on the number
    of images, so it stays comparable with figures measured before a search had a val set)."""
    names = list(names)
    return [n for n in names if n != VAL] or names


# --- InfoGAN: codes are not labels, so code values are matched to the judge's classes ------------------


def match_codes(codes: np.ndarray, predicted: np.ndarray, *, n_codes: int, n_classes: int) -> np.ndarray:
    """(n_codes,) class of each code value, matched one-to-one so as to maximise agreement (Hungarian);
    -1 for a code value left without a class (more codes than classes)."""
    from scipy.optimize import linear_sum_assignment  # lazy: only the InfoGAN protocol needs scipy

    counts = np.zeros((n_codes, n_classes), dtype=np.int64)
    np.add.at(counts, (codes, predicted), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(n_codes, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def matched_accuracy(codes: np.ndarray, predicted: np.ndarray, *, n_codes: int, n_classes: int) -> float:
    """Accuracy after matching code values to classes one-to-one so as to maximise agreement (Hungarian)."""
    mapping = match_codes(codes, predicted, n_codes=n_codes, n_classes=n_classes)
    return float((mapping[codes] == predicted).sum() / max(len(codes), 1))


def code_accuracy(
    generate: GenerateFn,
    classify: Callable[[Tensor], Tensor],
    *,
    n_codes: int,
    n_classes: int,
    per_code: int = 100,
    seed: int = 0,
) -> float:
    """InfoGAN's protocol: `generate(disc_codes (B,), cpu generator) -> images`, `classify(images) -> (B, C)`
    scores; per_code images for each discrete value, then Hungarian-matched accuracy."""
    codes, preds = [], []
    for k in range(n_codes):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        disc = torch.full((per_code,), k, dtype=torch.long)
        preds.append(classify(generate(disc, gen)).argmax(1).cpu().numpy())
        codes.append(disc.numpy())
    return matched_accuracy(
        np.concatenate(codes), np.concatenate(preds), n_codes=n_codes, n_classes=n_classes
    )


def evaluate_codes(
    generate: GenerateFn,
    evaluator: Evaluator,
    conditions: Mapping[str, Tensor | np.ndarray],
    *,
    n_codes: int,
    real: Tensor | np.ndarray | None = None,
    per_code: int = 100,
    n_draws: int = 8,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """InfoGAN's protocol (Chen et al. 2016 on MNIST), with `evaluate_generator`'s keys.

    ``generate(disc (B,) long, cpu generator) -> (B, 3, H, W)`` in [-1, 1]: ``per_code`` images for each
    discrete code value, from a generator seeded ``seed * 1000 + value``. The codes are not labels, so code
    values are matched one-to-one to the judge's top classes (Hungarian) and ``acc`` is the matched accuracy;
    every ``acc_<name>`` of the reported sets carries the same figure (there is one accuracy, not one per set).
    ``acc_val`` (when `conditions` has `VAL`): the same protocol on other images (generators seeded
    ``draw_seed(seed, value, VAL)``), matched on their own, with ``acc_val_std``: a decision never reads the
    images the reported accuracy is measured on.
    ``acc_std``: population std of that accuracy over ``n_draws`` equal slices of each value's images.
    ``fid``: the first images of each value, as many in all as `evaluate_generator` draws for the reported
    sets (``n_draws`` x rows; x code values without sets): FID is biased by sample size, so an InfoGAN FID
    compares with a conditional one.
    ``diversity``: mean pairwise feature distance between images of one code value, averaged over values.
    """
    if not 1 <= n_draws <= per_code:
        raise ValueError(f"need 1 <= n_draws <= per_code, got n_draws {n_draws}, per_code {per_code}")
    names = list(conditions)
    images = functools.partial(
        _code_images, generate, evaluator, n_codes=n_codes, per_code=per_code, batch_size=batch_size
    )
    with torch.inference_mode():
        pred, feats = images(
            lambda value: seed * 1000 + value
        )  # (n_codes, per_code), per value (per_code, F)
        val = images(lambda value: draw_seed(seed, value, VAL))[0] if VAL in names else None
        real_stats = real_feature_stats(evaluator, real, batch_size=batch_size) if real is not None else None

    acc, per_draw = _matched(pred, n_classes=evaluator.n_classes, n_draws=n_draws)
    result = {f"acc_{name}": acc for name in names}
    result["acc"] = acc
    result["acc_std"] = float(np.std(per_draw))
    if val is not None:
        result[f"acc_{VAL}"], val_draws = _matched(val, n_classes=evaluator.n_classes, n_draws=n_draws)
        result["acc_val_std"] = float(np.std(val_draws))
    rows = sum(len(conditions[name]) for name in _reported(names)) if names else 0
    n_fid = n_draws * (rows or n_codes)  # no sets: one row per value
    first = min(per_code, max(2, math.ceil(n_fid / n_codes)))
    fid_feats = torch.cat([f[:first] for f in feats])
    result["fid"] = (
        frechet_distance(feature_stats(fid_feats), real_stats) if real_stats is not None else math.nan
    )
    result["diversity"] = float(torch.cat([_pairwise_mean(f[:, None, :]) for f in feats]).mean())
    return {key: result[key] for key in metric_keys(names)}


def _code_images(
    generate: GenerateFn,
    evaluator: Evaluator,
    seed_of: Callable[[int], int],
    *,
    n_codes,
    per_code,
    batch_size,
) -> tuple[np.ndarray, list[Tensor]]:
    """The judge's class of `per_code` images of each code value ((n_codes, per_code)) and their features,
    the images of value v drawn from a generator seeded `seed_of(v)`."""
    predicted, feats = [], []
    for value in range(n_codes):
        gen = torch.Generator().manual_seed(seed_of(value))
        images = generate(torch.full((per_code,), value, dtype=torch.long), gen)
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[:2] != (per_code, 3):
            got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"generate returned {got} for {per_code} codes; expected ({per_code}, 3, H, W)")
        p, f = evaluator.scores_and_features(images, batch_size=batch_size)
        predicted.append(p.argmax(1).numpy())
        feats.append(f)
    return np.stack(predicted), feats


def _matched(pred: np.ndarray, *, n_classes: int, n_draws: int) -> tuple[float, list[float]]:
    """Hungarian-matched accuracy of (n_codes, per_code) predicted classes, and its value on n_draws
    equal slices of each value's images."""
    n_codes, per_code = pred.shape
    codes = np.repeat(np.arange(n_codes), per_code).reshape(n_codes, per_code)
    mapping = match_codes(codes.ravel(), pred.ravel(), n_codes=n_codes, n_classes=n_classes)
    correct = mapping[codes] == pred  # (n_codes, per_code)
    return float(correct.mean()), [float(part.mean()) for part in np.array_split(correct, n_draws, axis=1)]
