"""Datasets: the real i-CLEVR layout, its synthetic renderer, packed caches and the digits set.

Every source becomes an `ImageSet` (uint8 images + multi-hot labels + fingerprint); training puts it
on the device as `DeviceData`. See `python -m trainers.data --help` for the command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.data.digits import load_digits
from trainers.data.errors import DataError
from trainers.data.iclevr import read_iclevr
from trainers.data.imageset import DeviceData, ImageSet, to_model_range
from trainers.data.labels import iclevr_conditions, load_conditions, load_vocab, spec_file
from trainers.data.pack import load_cached, load_packed, pack, write_packed

__all__ = [
    "DataError",
    "DeviceData",
    "ImageSet",
    "conditions_for",
    "iclevr_conditions",
    "load_cached",
    "load_conditions",
    "load_dataset",
    "load_digits",
    "load_packed",
    "load_vocab",
    "pack",
    "read_iclevr",
    "spec_file",
    "to_model_range",
    "write_packed",
]


def load_dataset(source: str | Path, *, size: int = 64, progress: bool = True) -> ImageSet:
    """ "digits", a packed .parquet file, or a dataset folder in i-CLEVR layout (through the pack cache)."""
    if str(source) == "digits":
        return load_digits(size=size)
    path = Path(source)
    if path.suffix == ".parquet":
        data = load_packed(path)
        if data.size != size:
            raise DataError(f"{path}: packed at {data.size}x{data.size}, but size {size} was asked for")
        return data
    if not path.exists():
        raise DataError(f"{path}: no such dataset (expected 'digits', a .parquet pack or a dataset folder)")
    return load_cached(path, size=size, progress=progress)


def conditions_for(data: ImageSet, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """The condition sets a generator trained on `data` is scored on.

    i-CLEVR (24 classes): test.json and new_test.json (from `root` if it has them). Single-label sets
    such as digits: one row per class.
    """
    if data.classes == load_vocab(spec_file("objects.json")):
        return iclevr_conditions(root)
    return {data.name or "classes": np.eye(data.n_classes, dtype=np.float32)}
