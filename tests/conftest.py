"""Shared fixtures: tiny datasets in the i-CLEVR layout, made without the renderer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.data.labels import SPEC_FILES, spec_file

TINY_LABELS = {
    "CLEVR_train_000000_0.png": ["red cube"],
    "CLEVR_train_000000_1.png": ["red cube", "blue sphere"],
    "CLEVR_train_000001_0.png": ["yellow cylinder"],
    "CLEVR_train_000001_1.png": ["yellow cylinder", "gray cube"],
    "CLEVR_train_000001_2.png": ["yellow cylinder", "gray cube", "cyan sphere"],
}


def make_iclevr_folder(root: Path, labels: dict[str, list[str]] = TINY_LABELS, size=(40, 30)) -> Path:
    """A valid dataset folder: spec files, train.json, and one noise PNG (RGBA, as the real ones) per entry."""
    (root / "images").mkdir(parents=True)
    for name in SPEC_FILES:
        shutil.copy(spec_file(name), root / name)
    (root / "train.json").write_text(json.dumps(labels))
    rng = np.random.default_rng(0)
    for name in labels:
        pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(root / "images" / name)
    return root


@pytest.fixture
def iclevr_folder(tmp_path: Path) -> Path:
    return make_iclevr_folder(tmp_path / "ds")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Automatic packs go to a per-session temp dir, never the developer's ~/.cache."""
    monkeypatch.setenv("CGAN_SEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread():
    """Tiny tensors: a second torch thread costs more in synchronisation than it saves. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
