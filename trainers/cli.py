"""What every command line of this project shares: argparse types whose errors name the bad value, and one
way to end, so bad input gives one line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, else "expected an integer >= N, got 'x'"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its own messages
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def run_command(
    body: Callable[[], int | None],
    errors: tuple[type[BaseException], ...],
    *,
    exit_codes: Mapping[type[BaseException], int] | None = None,
    prefix: str = "error",
    interrupted: str = "interrupted",
) -> int:
    """body()'s exit code (0 for None). A listed error prints `prefix: message` on one line and returns its
    code from exit_codes (default 2); an OSError names its file; Ctrl-C returns 130."""
    try:
        return body() or 0
    except errors as err:
        print(f"{prefix}: {' '.join(str(err).split())}", file=sys.stderr)
        return next((code for kind, code in (exit_codes or {}).items() if isinstance(err, kind)), 2)
    except OSError as err:
        print(f"{prefix}: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
