"""A judge measured, not trusted: its official top-k accuracy on a fixed, stratified sample of the user's data.

A judge that comes without a record for this data (the official ``{"model": state_dict}`` file has no sidecar
at all; a project judge's sidecar may describe other data) is scored on the user's own labelled images before
anything trains, and that figure is what the floor applies to. It is cached by checkpoint sha256 and data
fingerprint, so a second search (or `python -m trainers.evaluator calibrate` run first) starts at once.

Nothing here imports the data stack at module level: `import trainers.evaluator` stays light.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainers.evaluator.metrics import topk_accuracy
from trainers.evaluator.model import (
    RESOLUTION,
    Evaluator,
    EvaluatorError,
    file_sha256,
    read_sidecar,
    sidecar_path,
)
from trainers.evaluator.recipe import DIGITS_SIZE, SAMPLE  # torch-free, for the command line's --help
from trainers.files import atomic_write

SEED = 0  # the sample is fixed: the same data always gives the same images, hence comparable figures
VERSION = 1  # of the cached record; another version is measured again
ICLEVR_CLASSES = 24  # the official judge's output size; it carries no class names (objects.json order)

# What the search's figure means, by where it came from (tagged on the parent run as search.evaluator_acc_source)
HELD_OUT, CALIBRATED = "held-out", "calibrated"


def stratified_sample(labels: np.ndarray, n: int, *, seed: int = SEED) -> np.ndarray:
    """Sorted indices of min(n, N) rows of (N, C) multi-hot labels, drawn per stratum.

    A row's stratum is (its label count, its rarest class): each gets one row (when n is at least the number
    of strata) and its proportional share of the rest (largest remainders), so 1-, 2- and 3-object images
    appear as in the data and every class, rare ones included, is measured.
    Deterministic for given labels, n and seed.
    """
    labels = np.asarray(labels) > 0.5
    total = len(labels)
    if n >= total:
        return np.arange(total)
    counts = labels.sum(axis=0)
    k = labels.sum(axis=1)
    rarest = np.where(labels, counts, np.iinfo(np.int64).max).argmin(axis=1)  # ties: the lower index
    rarest[k == 0] = -1
    keys = k * (labels.shape[1] + 1) + rarest + 1
    _, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    # one image of every stratum first (when n allows), so a class seen twice in the data is still measured;
    # the rest in proportion to what is left of each stratum
    base = np.ones_like(sizes) if n >= len(sizes) else np.zeros_like(sizes)
    rest = sizes - base
    share = rest * (n - base.sum()) / rest.sum()
    quota = np.floor(share).astype(int)
    quota[np.argsort(-(share - quota), kind="stable")[: n - base.sum() - quota.sum()]] += 1
    quota += base
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(inverse == s))[:q] for s, q in enumerate(quota)]
    return np.sort(np.concatenate(picked))


def judge_classes(ev: Evaluator) -> tuple[tuple[str, ...] | None, str]:
    """(the class order the judge's outputs follow, where that comes from).

    Its sidecar's classes; else, for a 24-output judge, i-CLEVR's objects.json (the official file carries no
    names: it was trained in that order); else unknown (None): only the output count can be checked.
    """
    if ev.meta.get("classes"):
        return tuple(ev.meta["classes"]), "its sidecar"
    if ev.n_classes == ICLEVR_CLASSES:
        from trainers.data.labels import load_vocab, spec_file  # lazy: the data stack

        return load_vocab(spec_file("objects.json")), "i-CLEVR's objects.json, the official judge's order"
    return None, "unknown"


def check_matches(path: str | os.PathLike, ev: Evaluator, classes: Sequence[str], data_name: str) -> None:
    """Raise EvaluatorError (one line naming the judge and the data) unless the judge's outputs are the data's
    classes in the data's order."""
    if ev.n_classes != len(classes):
        raise EvaluatorError(
            f"{path}: the judge has {ev.n_classes} outputs, but {data_name} has {len(classes)} classes"
        )
    mine, source = judge_classes(ev)
    if mine is not None and tuple(mine) != tuple(classes):
        i = next(i for i, (a, b) in enumerate(zip(mine, classes, strict=True)) if a != b)
        raise EvaluatorError(
            f"{path}: the judge's classes ({source}) are not {data_name}'s: output {i} is {mine[i]!r} "
            f"for the judge, {classes[i]!r} in the data's objects.json"
        )


def judge_data(spec: str | os.PathLike, *, progress: bool = True):
    """The labelled images a judge is measured on, at the judge's resolution: a dataset folder is loaded at
    64x64 (through the pack cache, so once), a .parquet pack as packed, digits at 32x32."""
    from trainers.data import load_dataset, load_packed  # lazy: the data stack

    if str(spec) == "digits":
        return load_dataset("digits", size=DIGITS_SIZE)
    if str(spec).endswith(".parquet"):
        return load_packed(spec)
    return load_dataset(spec, size=RESOLUTION, progress=progress)


def calibration_dir(home: str | os.PathLike) -> Path:
    """Where measured figures live under a search home: the search and the calibrate command share it."""
    return Path(home) / "evaluators" / "calibration"


def cache_file(cache_dir: Path, sha256: str, fingerprint: str, sample: int, seed: int) -> Path:
    return Path(cache_dir) / f"{sha256[:20]}-{fingerprint}-n{sample}-s{seed}.json"


def _read_cached(path: Path, *, sha256: str, fingerprint: str) -> dict[str, Any] | None:
    """The cached record if it is whole and describes this checkpoint and data; else None (measure again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = (
        isinstance(record, dict)
        and record.get("version") == VERSION
        and record.get("checkpoint_sha256") == sha256
        and record.get("data_fingerprint") == fingerprint
        and isinstance(record.get("acc"), (int, float))
    )
    return record if ok else None


def calibrate(
    path: str | os.PathLike,
    data,
    *,
    data_spec: str,
    cache_dir: str | os.PathLike,
    sample: int = SAMPLE,
    seed: int = SEED,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the judge at PATH on `data` (an ImageSet, ideally from `judge_data`), or read the cached figure.

    Refuses (EvaluatorError) a judge whose output size or classes are not the data's. Returns the record:
    ``acc`` (official top-k accuracy over the sample), ``acc_by_objects`` (the same per label count), ``n``,
    ``n_data``, ``cached`` (whether it was read back), the judge's ``classes``, ``width``, ``n_classes``, and what
    it was measured on (``data``, ``data_fingerprint``, ``resolution``, ``checkpoint_sha256``, ``sample``, ``seed``).
    """
    path = Path(path)
    ev = Evaluator.load(path, device=device)  # one clear line for an unreadable or foreign file
    check_matches(path, ev, data.classes, str(data_spec))
    sha = file_sha256(path)
    cache = cache_file(Path(cache_dir), sha, data.fingerprint, sample, seed)
    record = _read_cached(cache, sha256=sha, fingerprint=data.fingerprint)
    if record is not None:
        return {**record, "cached": True, "cache": str(cache)}
    start = time.perf_counter()
    idx = stratified_sample(data.labels, sample, seed=seed)
    probs = []
    bar = tqdm(total=len(idx), desc="measuring the judge", unit="img", disable=not progress)
    with bar:
        for chunk in np.array_split(idx, max(1, math.ceil(len(idx) / batch_size))):
            x = torch.from_numpy(np.ascontiguousarray(data.images[chunk])).permute(0, 3, 1, 2)  # (B, 3, H, W)
            probs.append(ev.scores(x.float().div_(127.5).sub_(1.0), batch_size=batch_size))
            bar.update(len(chunk))
    probs = torch.cat(probs)
    labels = torch.as_tensor(data.labels[idx])
    k = labels.sum(dim=1)
    by_objects = {str(int(c)): topk_accuracy(probs[k == c], labels[k == c]) for c in torch.unique(k) if c > 0}
    classes, _ = judge_classes(ev)
    record = {
        "version": VERSION,
        "acc": topk_accuracy(probs, labels),
        "acc_by_objects": by_objects,
        "n": len(idx),
        "n_data": len(data),
        "sample": sample,
        "seed": seed,
        "resolution": data.size,
        "data": str(data_spec),
        "data_fingerprint": data.fingerprint,
        "checkpoint": str(path),
        "checkpoint_sha256": sha,
        "classes": list(classes) if classes is not None else list(data.classes),
        "n_classes": ev.n_classes,
        "width": ev.width,
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(ev.device),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
    return {**record, "cached": False, "cache": str(cache)}


def describe(record: Mapping[str, Any]) -> str:
    """What was measured and what it means, in one line."""
    n, total = record["n"], record["n_data"]
    which = f"all {total:,}" if n == total else f"{n:,} (a fixed stratified sample) of the {total:,}"
    return (
        f"top-k accuracy {record['acc']:.3f} on {which} labelled images of {record['data']} at "
        f"{record['resolution']}x{record['resolution']}; these are your training images, so a judge trained "
        "on them will look better than it is"
    )


def sidecar_verdict(path: str | os.PathLike, data_fingerprint: str) -> str | None:
    """None when PATH's sidecar is a trustworthy record for this data (its held-out accuracy then stands),
    else why the judge must be measured. A sidecar of another checkpoint is refused: it is not this judge's."""
    side = sidecar_path(path)
    if not side.is_file():
        return "no sidecar (an official-format file)"
    meta = read_sidecar(path)
    sha = meta.get("checkpoint_sha256")
    if sha is not None and sha != file_sha256(path):
        raise EvaluatorError(
            f"{side}: sidecar describes another checkpoint (sha256 mismatch with {Path(path).name}); "
            "delete it to have the judge measured on your data instead"
        )
    if meta.get("data_fingerprint") != data_fingerprint:
        return (
            f"its sidecar is for other data (fitted on {meta.get('data_fingerprint')}, "
            f"this data is {data_fingerprint})"
        )
    if not isinstance(meta.get("heldout_acc"), (int, float)):
        return "its sidecar records no held-out accuracy"
    return None


def measured_judge(
    path: str | os.PathLike,
    data,
    *,
    data_spec: str,
    floor: float,
    cache_dir: str | os.PathLike,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The search's guard for a judge it was given: its meta, with ``judge_acc`` (the figure the floor was
    applied to) and ``judge_acc_source`` (HELD_OUT or CALIBRATED); raises EvaluatorError below the floor.

    `data` is the ImageSet as the search loaded it. A sidecar that records a held-out accuracy on this very data
    (its fingerprint) is trusted as before; otherwise the judge is measured on ``judge_data(data_spec)``.
    """
    from trainers.evaluator.model import check_evaluator

    data_fingerprint = data.fingerprint
    reason = sidecar_verdict(path, data_fingerprint)
    if reason is None:
        meta = check_evaluator(path, data_fingerprint=data_fingerprint, floor=floor)
        return {**meta, "judge_acc": float(meta["heldout_acc"]), "judge_acc_source": HELD_OUT}
    # a judge for other classes is refused before the data is read again at its resolution
    check_matches(path, Evaluator.load(path, device="cpu"), data.classes, str(data_spec))
    log(f"evaluator {path}: {reason}; measuring it on your labelled images")
    record = calibrate(path, judge_data(data_spec), data_spec=data_spec, cache_dir=cache_dir)
    said = describe(record)
    if not record["acc"] >= floor:
        raise EvaluatorError(f"{path}: {said}; that is below the floor {floor:.3f} (--evaluator-floor)")
    log(
        f"evaluator {path}: {said}. The floor {floor:.3f} is applied to this figure"
        + (f" (cached in {record['cache']})" if record["cached"] else f"; cached in {record['cache']}")
    )
    side = read_sidecar(path) if sidecar_path(path).is_file() else {}
    keep = {k: v for k, v in side.items() if k not in ("heldout_acc", "classes")}  # other data's figure
    return {
        **keep,
        "classes": record["classes"],
        "n_classes": record["n_classes"],
        "width": record["width"],
        "checkpoint_sha256": record["checkpoint_sha256"],
        "judge_acc": float(record["acc"]),
        "judge_acc_source": CALIBRATED,
        "calibration": {k: v for k, v in record.items() if k not in ("classes", "cached")},
    }
