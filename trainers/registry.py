"""The one lookup every registry goes through, the error a bad choice raises, and the check that keys an
implementation registry by the names `trainers.choices` declares."""

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


def implements(names: Mapping[str, object], registry: dict[str, T], *, axis: str) -> dict[str, T]:
    """`registry` itself, once its keys are exactly the declared `names`, in the same order: an implementation
    module's registry is checked against its axis in `trainers.choices` when it is imported, so a name cannot
    be declared without its implementation or implemented without being declared (and choosable)."""
    if list(registry) != list(names):
        raise RuntimeError(
            f"{axis}: the implementations {list(registry)} do not match the names trainers.choices declares "
            f"{list(names)}"
        )
    return registry
