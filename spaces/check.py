"""Check a space against the trainer: every sampled config must build a valid `TrainConfig`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from spaces.space import Space, SpaceError, load_space


def _trainer_config(path: Path) -> type:
    try:
        from trainers.config import TrainConfig
    except ImportError as exc:
        raise SpaceError(
            f"{path}: cannot check it, trainers.config.TrainConfig does not import: {exc}"
        ) from None
    return TrainConfig


def _mentioned(message: str, config: dict[str, Any]) -> str:
    """The sampled values the trainer's message talks about (else all of them): the key and value to fix."""
    keys = [k for k in config if re.search(rf"\b{re.escape(k)}\b", message)] or list(config)
    return ", ".join(f"{k}={config[k]!r}" for k in keys)


def check_config(space: Space, config: dict[str, Any], seed: int, train_config: type) -> None:
    """Raise `SpaceError` (one line) unless `config` builds a `train_config` whose `validate()` passes."""
    where = f"{space.path}: sample seed {seed}"
    fields = {f.name for f in dataclasses.fields(train_config)}
    for key, value in config.items():
        if key not in fields:
            raise SpaceError(f"{where}: key {key!r} (value {value!r}) is not a TrainConfig field")
    try:
        train_config.from_dict(config).validate()
    except Exception as exc:  # noqa: BLE001 -- any rejection is reported as one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise SpaceError(
            f"{where}: TrainConfig rejected it: {message} ({_mentioned(message, config)})"
        ) from None


def check_file(path: str | Path, samples: int = 200, seed: int = 0) -> str:
    """Load `path`, sample `samples` configs (seeds `seed`, `seed + 1`, ...) and check each; return a summary."""
    space = load_space(path)
    train_config = _trainer_config(space.path)
    for i in range(samples):
        check_config(space, space.sample(seed + i), seed + i, train_config)
    return f"{space.path}: {samples} configs valid ({space.summary()})"
