"""What every command line of this project shares: argparse types whose errors name the bad value, and one
way to end, so bad input gives one line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit status 2 (argparse would print a usage block first).
    Subcommands inherit it (add_subparsers builds them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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
SEED_MAX = (
    2**32 - 1
)  # numpy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1; outside, a run fails late


def seed_int(text: str) -> int:
    """An argparse type: a random seed, 0 .. 2**32 - 1 (what every RNG the project seeds accepts)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_MAX}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate, a weight)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a held-out fraction)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def power_of_two_size(text: str) -> int:
    """An argparse type: a training resolution the generators can build (4x4 doubled up: 8, 16, 32, ...)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 8 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two >= 8 (8, 16, 32, 64, 128), got {text!r}")
    return value


def device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), checked before any work."""
    import torch  # lazy: only a command given --device pays for it here

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}: expected cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}: expected cpu, cuda, cuda:N or mps")
    return text


def output_file(*suffixes: str) -> Callable[[str], Path]:
    """An argparse type for a file a command will write: refused at once (not after minutes of work) when
    it names a folder, sits below a file, lies in a folder it cannot write, or lacks one of `suffixes`.
    Checks only: nothing is created here."""

    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text}: expected a file name ending in {' or '.join(suffixes)}"
            )
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name inside it")
        problem = folder_problem(path.parent)
        if problem:
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return path

    parse.__name__ = "output file"
    return parse


def output_folder(text: str) -> Path:
    """An argparse type for a folder a command will create or write into (checks only, as output_file)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    problem = folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (made later with its parents where missing), else None."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {existing} is not writable"
    return None


# Every command's exit status, one meaning each (docs/search.md, "Exit codes"; tests/test_bad_inputs.py pins them).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran but cannot end well (a search where no trial can be chosen)
EXIT_BAD_INPUT = 2  # a bad argument, or a known error naming the file, key or value at fault
EXIT_DIVERGED = 3  # trainers.train: the recipe diverged (its failure, not the user's)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a SIGINT


def run_command(
    body: Callable[[], int | None],
    errors: tuple[type[BaseException], ...],
    *,
    prog: str | None = None,
    exit_codes: Mapping[type[BaseException], int] | None = None,
    interrupted: str = "interrupted",
) -> int:
    """The one way every command ends: body()'s exit code (0 for None). A listed error prints
    `PROG: error: message` on one line (as OneLineParser does for a bad argument) and returns its code from
    exit_codes (default EXIT_BAD_INPUT); an OSError names its file; Ctrl-C prints `PROG: interrupted` and
    returns EXIT_INTERRUPTED."""
    lead = f"{prog}: " if prog else ""
    try:
        return body() or EXIT_OK
    except errors as err:
        print(f"{lead}error: {' '.join(str(err).split())}", file=sys.stderr)
        return next(
            (code for kind, code in (exit_codes or {}).items() if isinstance(err, kind)), EXIT_BAD_INPUT
        )
    except OSError as err:
        print(f"{lead}error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{lead}{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
