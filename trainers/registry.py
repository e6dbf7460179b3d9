"""The one lookup every registry goes through, and the error a bad choice raises."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A training configuration that cannot be built; the message names the key and the valid values."""


def lookup(registry: Mapping[str, T], key: str, *, axis: str) -> T:
    """registry[key], or a ConfigError that lists the valid keys (and the closest one, for typos)."""
    try:
        return registry[key]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(key), list(registry), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {axis} {key!r}{hint}; valid: {', '.join(sorted(registry))}") from None
