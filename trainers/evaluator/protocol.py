"""The evaluation protocol every trainer uses: n seeded draws per condition -> acc, acc_std, fid, diversity.

Label-conditioned generators go through `evaluate_generator`, InfoGAN (codes instead of labels) through
`evaluate_codes`, which matches code values to classes one-to-one (Hungarian: `match_codes`), as Chen et al.
2016 scored MNIST; both return exactly `metric_keys(conditions)`, so every trial of a search reports the same
numbers (a multi-objective search on acc and fid needs both from every trial).
"""

from __future__ import annotations

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


def metric_keys(conditions: Iterable[str]) -> tuple[str, ...]:
    """The keys both protocols return for these condition set names (a mapping's keys, or the names)."""
    return (*(f"acc_{name}" for name in conditions), "acc", "acc_std", "fid", "diversity")


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

    Returns ``acc_<name>`` (official top-k accuracy of the whole set, mean over draws), ``acc`` (mean of those),
    ``acc_std`` (population std over draws of the per-draw mean over sets; 0 for one draw), ``fid``
    (Frechet distance in the evaluator's penultimate features between all generated images and ``real``; nan
    without ``real``) and ``diversity`` (mean pairwise feature distance between the draws of one condition
    row, averaged over all rows; ~0 for a collapsed generator, nan for one draw).
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

    per_draw = np.mean([accs[name] for name in labels], axis=0)  # (n_draws,)
    result = {f"acc_{name}": float(np.mean(accs[name])) for name in labels}
    result["acc"] = float(np.mean([result[f"acc_{name}"] for name in labels]))
    result["acc_std"] = float(np.std(per_draw))
    all_feats = torch.cat([f for name in labels for f in feats[name]])
    result["fid"] = (
        frechet_distance(feature_stats(all_feats), real_stats) if real_stats is not None else math.nan
    )
    if n_draws > 1:
        result["diversity"] = float(
            torch.cat([_pairwise_mean(torch.stack(feats[name])) for name in labels]).mean()
        )
    else:
        result["diversity"] = math.nan
    return result


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
    every ``acc_<name>`` of `conditions` carries the same figure (there is one accuracy, not one per set).
    ``acc_std``: population std of that accuracy over ``n_draws`` equal slices of each value's images.
    ``fid``: the first images of each value, as many in all as `evaluate_generator` draws for `conditions`
    (``n_draws`` x rows; x code values without sets): FID is biased by sample size, so an InfoGAN FID
    compares with a conditional one.
    ``diversity``: mean pairwise feature distance between images of one code value, averaged over values.
    """
    if not 1 <= n_draws <= per_code:
        raise ValueError(f"need 1 <= n_draws <= per_code, got n_draws {n_draws}, per_code {per_code}")
    names = list(conditions)
    predicted, feats = [], []  # per code value: (per_code,), (per_code, F)
    with torch.inference_mode():
        for value in range(n_codes):
            gen = torch.Generator().manual_seed(seed * 1000 + value)
            images = generate(torch.full((per_code,), value, dtype=torch.long), gen)
            if not torch.is_tensor(images) or images.dim() != 4 or images.shape[:2] != (per_code, 3):
                got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
                raise ValueError(
                    f"generate returned {got} for {per_code} codes; expected ({per_code}, 3, H, W)"
                )
            p, f = evaluator.scores_and_features(images, batch_size=batch_size)
            predicted.append(p.argmax(1).numpy())
            feats.append(f)
        real_stats = real_feature_stats(evaluator, real, batch_size=batch_size) if real is not None else None

    pred = np.stack(predicted)  # (n_codes, per_code)
    codes = np.repeat(np.arange(n_codes), per_code).reshape(n_codes, per_code)
    mapping = match_codes(codes.ravel(), pred.ravel(), n_codes=n_codes, n_classes=evaluator.n_classes)
    correct = mapping[codes] == pred  # (n_codes, per_code)
    acc = float(correct.mean())
    per_draw = [float(part.mean()) for part in np.array_split(correct, n_draws, axis=1)]
    result = {f"acc_{name}": acc for name in names}
    result["acc"] = acc
    result["acc_std"] = float(np.std(per_draw))
    n_fid = n_draws * (sum(len(c) for c in conditions.values()) or n_codes)  # no sets: one row per value
    first = min(per_code, max(2, math.ceil(n_fid / n_codes)))
    fid_feats = torch.cat([f[:first] for f in feats])
    result["fid"] = (
        frechet_distance(feature_stats(fid_feats), real_stats) if real_stats is not None else math.nan
    )
    result["diversity"] = float(torch.cat([_pairwise_mean(f[:, None, :]) for f in feats]).mean())
    return result
