"""Setup run in every Ray worker of a search (the job's `worker_process_setup_hook`, set by driver.start_ray).

Standard library only: it is imported in every worker before any task runs.

Why: Ray stops a worker it no longer needs (an idle one, or every trial's on Ctrl-C) with SIGTERM, and its
handler (ray/_private/worker.py, `sigterm_handler`) raises SystemExit wherever the worker's main thread is.
When that is inside a garbage-collection or weakref callback, Python cannot raise it and prints it instead
("Exception ignored in: ...", a traceback, "SystemExit: 1"); Ray forwards the worker's stderr to the
driver, so a user's Ctrl-C ended in a traceback on their terminal (seen on CI 2026-12-02). That one report is
dropped here; every other unraisable exception is printed as before. What the worker does is unchanged:
Python would have ignored the exception either way.
"""

from __future__ import annotations

import sys
import traceback

HANDLER = "sigterm_handler"  # the name of Ray's SIGTERM handler (Ray 2.60), the frame the exception left


def is_rays_sigterm_exit(unraisable) -> bool:
    """An unraisable SystemExit raised by Ray's SIGTERM handler (its frame is in the traceback)."""
    if not isinstance(unraisable.exc_value, SystemExit):
        return False
    return any(frame.name == HANDLER for frame in traceback.extract_tb(unraisable.exc_traceback))


def quiet_sigterm_exit() -> None:
    """Install a sys.unraisablehook that drops Ray's SIGTERM SystemExit and passes on everything else."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_rays_sigterm", False):  # a worker reused by another task of the job
        return

    def hook(unraisable) -> None:
        if not is_rays_sigterm_exit(unraisable):
            previous(unraisable)

    hook._drops_rays_sigterm = True
    sys.unraisablehook = hook
