"""Scores that need no network: the official top-k accuracy, per-class F1, the Frechet distance."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


def _multi_hot(labels: Tensor | np.ndarray, shape: tuple[int, ...] | None = None) -> Tensor:
    truth = torch.as_tensor(labels)
    if truth.dim() != 2 or (shape is not None and tuple(truth.shape) != shape):
        raise ValueError(
            f"labels must be a (B, C) multi-hot tensor matching the scores {shape}, got {tuple(truth.shape)}"
        )
    if not bool(((truth == 0) | (truth == 1)).all()):
        raise ValueError("labels must be multi-hot (only 0 and 1)")
    return truth.bool()


def topk_accuracy(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """The official i-CLEVR accuracy of one batch.

    For each image, k = its number of true labels; a hit is a true label among its k highest scores.
    Returns total hits / total true labels over the batch (images with no label count for nothing).
    Ties are broken toward the LOWER class index (a stable descending sort), so the result is the same on
    every device; the official code uses ``torch.topk``, whose order among equal scores is unspecified.
    Raises ValueError on shape mismatch, non-binary labels, non-finite scores or a batch with no labels.
    """
    scores = torch.as_tensor(scores).detach().float().cpu()
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, C), got {tuple(scores.shape)}")
    truth = _multi_hot(labels, tuple(scores.shape)).cpu()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or inf")
    k = truth.sum(dim=1, keepdim=True)  # (B, 1)
    total = int(k.sum())
    if total == 0:
        raise ValueError("no true labels in the batch: accuracy is undefined")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, C)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))  # rank of each class, 0 = best
    hits = int((truth & (ranks < k)).sum())
    return hits / total


def per_class_f1(probs: Tensor, labels: Tensor, *, threshold: float = 0.5) -> list[float]:
    """F1 of each class when a class is predicted present at ``probs >= threshold``.

    A class with no positives and no predictions in the batch scores 1.0 (nothing to get wrong).
    """
    pred = torch.as_tensor(probs).float() >= threshold
    truth = _multi_hot(labels, tuple(pred.shape))
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
    return [float(v) for v in f1]


class FeatureStats(NamedTuple):
    """Mean and covariance of a feature set: all the Frechet distance needs (cache these for real data)."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    n: int


def feature_stats(features: Tensor | np.ndarray) -> FeatureStats:
    x = torch.as_tensor(features).detach().cpu().double().numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {x.shape}")
    return FeatureStats(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), n=x.shape[0])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats | Tensor | np.ndarray, b: FeatureStats | Tensor | np.ndarray) -> float:
    """Frechet distance between two Gaussians fitted to feature sets (N, D) or given as FeatureStats.

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace of the matrix square root is taken
    as tr((R S2 R)^1/2) with R = S1^1/2: R S2 R is symmetric PSD and similar to S1 S2, so an eigen-
    decomposition in float64 gives it without the complex parts and eps-offset retries that sqrtm of the
    non-symmetric product needs when covariances are singular (fewer samples than dimensions).
    """
    s1 = a if isinstance(a, FeatureStats) else feature_stats(a)
    s2 = b if isinstance(b, FeatureStats) else feature_stats(b)
    if s1.mu.shape != s2.mu.shape:
        raise ValueError(f"feature dimensions differ: {s1.mu.shape} vs {s2.mu.shape}")
    root1 = _sqrt_psd(s1.sigma)
    middle = root1 @ s2.sigma @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = s1.mu - s2.mu
    d = float(diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * tr_covmean)
    return max(d, 0.0)  # rounding can leave d(x, x) at -1e-12
