"""Label vocabularies and label files: names -> multi-hot vectors.

i-CLEVR labels are sets of class names ("red cube"); objects.json maps each name to its index. The real
test.json / new_test.json are bundled (they are data, not code) so that every dataset, real or synthetic,
is scored on the same 2 x 32 conditions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainers.data.errors import DataError

SPEC_DIR = Path(__file__).parent / "spec"
SPEC_FILES = ("objects.json", "test.json", "new_test.json")
# The two condition sets of the i-CLEVR task, in the order the course reports them.
TEST_SPLITS = ("test", "new_test")


def spec_file(name: str) -> Path:
    """Path of a bundled i-CLEVR spec file (objects.json, test.json, new_test.json)."""
    if name not in SPEC_FILES:
        raise DataError(f"{name}: not a bundled spec file (valid: {', '.join(SPEC_FILES)})")
    return SPEC_DIR / name


def read_json(path: str | Path) -> object:
    """Parse a JSON file, turning every failure into a one-line DataError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def load_vocab(path: str | Path) -> tuple[str, ...]:
    """Class names in index order from an objects.json ({name: index}, indices 0..C-1 without gaps)."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty object mapping class name -> index")
    names: dict[int, str] = {}
    for name, idx in raw.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise DataError(f"{path}: class {name!r} has index {idx!r}, expected a non-negative integer")
        if idx in names:
            raise DataError(f"{path}: index {idx} used by both {names[idx]!r} and {name!r}")
        names[idx] = name
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))
        raise DataError(f"{path}: class indices must be 0..{len(names) - 1}; missing {missing[:5]}")
    return tuple(names[i] for i in range(len(names)))


def encode_labels(labels: object, vocab: Sequence[str], *, where: str) -> np.ndarray:
    """One label list -> float32 multi-hot vector. `where` names the file and entry for error messages."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{where}: expected a list of label names, got {labels!r}")
    if not labels:
        raise DataError(f"{where}: empty label list")
    index = {name: i for i, name in enumerate(vocab)}
    vec = np.zeros(len(vocab), dtype=np.float32)
    for name in labels:
        if name not in index:
            raise DataError(f"{where}: unknown label {name!r} (not in objects.json)")
        if vec[index[name]]:
            raise DataError(f"{where}: duplicated label {name!r}")
        vec[index[name]] = 1.0
    return vec


def load_conditions(label_file: str | Path, vocab: Sequence[str]) -> np.ndarray:
    """A test file (JSON list of label lists) -> float32 (N, C) condition matrix."""
    raw = read_json(label_file)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{label_file}: expected a non-empty list of label lists")
    rows = [encode_labels(x, vocab, where=f"{label_file}: entry {i}") for i, x in enumerate(raw)]
    return np.stack(rows)


def check_condition_files(root: str | Path, vocab: Sequence[str]) -> None:
    """A dataset folder's own test.json / new_test.json (the conditions it is scored on) must use its
    vocabulary: checked with the images, not first when a search scores its first trial."""
    for split in TEST_SPLITS:
        path = Path(root) / f"{split}.json"
        if path.exists():
            load_conditions(path, vocab)


def iclevr_conditions(root: str | Path | None = None) -> dict[str, np.ndarray]:
    """{"test": (32, 24), "new_test": (32, 24)} from a dataset folder's files, else the bundled ones."""
    root = Path(root) if root is not None else None

    def pick(name: str) -> Path:
        if root is not None and (root / name).is_file():
            return root / name
        return spec_file(name)

    vocab = load_vocab(pick("objects.json"))
    return {split: load_conditions(pick(f"{split}.json"), vocab) for split in TEST_SPLITS}


def decode_labels(vec: np.ndarray, vocab: Sequence[str]) -> list[str]:
    """Multi-hot vector -> label names, in vocabulary order."""
    return [vocab[i] for i in np.flatnonzero(np.asarray(vec) > 0.5)]
