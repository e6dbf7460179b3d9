"""What a search needs before Ray starts trials: the data, a trusted evaluator, the condition sets, the ceiling.

With the embedded default nothing has to exist: synthetic i-CLEVR is rendered once and an evaluator is
fitted once, both cached under the search home (keyed by what they depend on), so a rerun starts at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_SEED = 0  # the synthetic set and its oracle renders do not follow --seed: one cache serves every search
ORACLE_SEED = 1  # oracle renders must not reuse training scenes
# The world every synthetic set renders: the faithful i-CLEVR world (trainers.data.sampling's default: one
# size, rubber, the generator's placement), so the embedded default searches the world real i-CLEVR users
# have. Its 32x32 judge (the cpu budget's 10,000 scenes, 12 epochs) holds out 0.944 (docs/search.md,
# "Budgets"). "clevr" (full CLEVR's two sizes and metal) stays available to trainers.data.render.
SYNTHETIC_WORLD = "iclevr"


@dataclass(frozen=True)
class Prepared:
    data: Any  # trainers.data.ImageSet
    data_spec: str  # what --data named, or the rendered folder
    evaluator_path: Path
    evaluator_meta: dict[str, Any]
    conditions: dict[str, np.ndarray]
    ceiling: dict[str, float]  # the evaluator's accuracy on oracle images of the same conditions
    ceiling_source: str

    @property
    def evaluator_fingerprint(self) -> str:
        return str(self.evaluator_meta.get("checkpoint_sha256", ""))[:16]


def synthetic_root(home: Path, *, scenes: int, size: int) -> Path:
    # the world is in the name: folders rendered by another world (or before worlds existed) never match
    return home / "data" / f"iclevr-synth-{SYNTHETIC_WORLD}-{scenes}-seed{DATA_SEED}-{size}px"


@contextmanager
def _only_one(target: Path, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock named after `target` (a file beside it): drivers sharing a home (bench seeds
    side by side, two searches started at once) build each cache entry once; the others wait, then find
    it. flock is released by the kernel when its holder dies, so a killed driver leaves no stale lock."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another driver building {target} (it is shared: built once)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _atomic_dir(
    target: Path, build: Callable[[Path], object], log: Callable[[str], None] | None = None
) -> Path:
    """Build a folder next to `target` and rename it into place: an interrupted render is never a cache hit,
    and of two drivers wanting it at once one renders while the other waits for it (_only_one)."""
    if target.is_dir():
        return target
    with _only_one(target, log):
        if target.is_dir():  # the driver we waited for built it
            return target
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a killed builder's: the lock was its
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        build(tmp)
        tmp.rename(target)
    return target


def load_data(spec: str, *, home: Path, size: int, scenes: int, log: Callable[[str], None]):
    """(ImageSet, folder or None). 'synthetic' renders `scenes` scenes at `size` once."""
    from trainers.data import load_dataset
    from trainers.data.render import render_training_set

    if spec == "synthetic":
        root = synthetic_root(home, scenes=scenes, size=size)

        def render(out: Path) -> None:
            log(
                f"rendering {scenes} synthetic i-CLEVR scenes ({SYNTHETIC_WORLD} world) at {size}x{size} into {root} (once)"
            )
            render_training_set(out, scenes=scenes, seed=DATA_SEED, size=size, world=SYNTHETIC_WORLD)

        _atomic_dir(root, render, log)
        return load_dataset(root, size=size), root
    data = load_dataset(spec, size=size)
    return data, Path(spec) if spec != "digits" and Path(spec).is_dir() else None


def ensure_evaluator(
    data,
    *,
    explicit: Path | None,
    home: Path,
    fit_overrides: dict,
    floor: float,
    spec: str,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """The given evaluator, or one fitted on `data` once and cached; then the guard of the floor.

    A judge fitted here, or given with a sidecar recording its held-out accuracy on this very data, is held to
    that figure. Any other given judge (the official file has no sidecar) is measured on the user's own
    labelled images at its resolution, once per checkpoint and data (cached under the home), and held to that.
    The returned meta says which: ``judge_acc`` and ``judge_acc_source`` ("held-out" or "calibrated").
    """
    from trainers.evaluator import (
        FitConfig,
        calibration_dir,
        check_evaluator,
        fit,
        measured_judge,
        sidecar_path,
    )

    if explicit is not None:
        meta = measured_judge(
            explicit,
            data,
            data_spec=spec,
            floor=floor,
            cache_dir=calibration_dir(home),
            log=log,
        )
        return explicit, meta
    config = FitConfig(**fit_overrides)
    recipe = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:8]
    path = home / "evaluators" / f"{data.name or 'data'}-{data.fingerprint}-fit{recipe}.pt"
    # the checkpoint is written before its sidecar (Evaluator.save): a fit is done when both are there
    done = lambda: path.is_file() and sidecar_path(path).is_file()  # noqa: E731
    if not done():
        with _only_one(path, log):
            if not done():  # else the driver we waited for fitted it
                log(
                    f"fitting an evaluator (ResNet18 width {config.width}, {config.epochs} epochs) on "
                    f"{len(data)} images into {path} (once)"
                )
                ev, report = fit(
                    data.images, data.labels, files=data.files, classes=data.classes, config=config,
                    progress=True,
                )  # fmt: skip
                meta = {"data": spec, "data_fingerprint": data.fingerprint, "data_size": data.size, **report}
                ev.save(path, meta)
    meta = check_evaluator(path, data_fingerprint=data.fingerprint, floor=floor)
    return path, {**meta, "judge_acc": float(meta["heldout_acc"]), "judge_acc_source": "held-out"}


def _load_images(folder: Path) -> tuple[np.ndarray, list[list[str]]]:
    from PIL import Image

    index = json.loads((folder / "labels.json").read_text())
    names = sorted(index)
    images = np.stack([np.asarray(Image.open(folder / "images" / n).convert("RGB")) for n in names])
    return images, [index[n] for n in names]


def oracle_ceiling(
    *,
    evaluator_path: Path,
    evaluator_meta: dict,
    conditions: dict[str, np.ndarray],
    data,
    home: Path,
    iclevr: bool,
) -> tuple[dict[str, float], str]:
    """What a perfect generator would score: the judge on oracle renders of each condition set (i-CLEVR),
    else its recorded held-out accuracy. Cached beside the evaluator."""
    if not iclevr:
        acc = float(evaluator_meta.get("judge_acc", float("nan")))
        return {"acc": acc}, f"evaluator {evaluator_meta.get('judge_acc_source', 'held-out')} accuracy"
    cache = evaluator_path.with_name(f"{evaluator_path.stem}.ceiling-{data.size}px.json")
    if cache.is_file():
        return json.loads(cache.read_text()), "oracle renders"
    from trainers.data import to_model_range
    from trainers.data.labels import spec_file
    from trainers.data.render import render_label_sets
    from trainers.evaluator import Evaluator

    ev = Evaluator.load(evaluator_path)
    ceiling = {}
    for name, rows in conditions.items():
        folder = home / "data" / f"oracle-{name}-{SYNTHETIC_WORLD}-seed{ORACLE_SEED}-{data.size}px"
        _atomic_dir(
            folder,
            lambda out, name=name: render_label_sets(
                spec_file(f"{name}.json"),
                out,
                seed=ORACLE_SEED,
                size=data.size,
                progress=False,
                world=SYNTHETIC_WORLD,
            ),
        )
        images, _ = _load_images(folder)
        ceiling[f"acc_{name}"] = ev.accuracy(to_model_range(images), rows[: len(images)])
    ceiling["acc"] = float(np.mean(list(ceiling.values())))
    cache.write_text(json.dumps(ceiling))
    return ceiling, "oracle renders"


def prepare(opts, log: Callable[[str], None] = print) -> Prepared:
    """Data, evaluator, conditions and ceiling for the options of one search."""
    from trainers.data import conditions_for
    from trainers.data.labels import TEST_SPLITS
    from trainers.evaluator.protocol import with_val

    os.environ.setdefault("CGAN_SEARCH_CACHE", str(opts.home / "cache"))  # packs live in the home too
    scenes = opts.scenes or 1000
    data, root = load_data(opts.data, home=opts.home, size=opts.size, scenes=scenes, log=log)
    spec = str(root) if opts.data == "synthetic" else opts.data
    path, meta = ensure_evaluator(
        data,
        explicit=opts.evaluator,
        home=opts.home,
        fit_overrides=dict(opts.evaluator_fit),
        floor=opts.evaluator_floor,
        spec=spec,
        log=log,
    )
    conditions = conditions_for(data, root)
    iclevr = set(conditions) == set(TEST_SPLITS) and opts.data == "synthetic"
    ceiling, source = oracle_ceiling(
        evaluator_path=path,
        evaluator_meta=meta,
        conditions=conditions,
        data=data,
        home=opts.home,
        iclevr=iclevr,
    )
    # the val set every decision reads (trainers.evaluator.protocol.val_conditions); the driver saves it on
    # the parent run and a resumed search reads it back from there
    conditions = with_val(conditions, data.labels)
    return Prepared(data, spec, path, meta, conditions, ceiling, source)
