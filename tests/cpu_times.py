"""A pytest plugin for measuring the suite (not a test module): wall and CPU seconds of every test phase.

    CPU_TIMES=/tmp/times.json .venv/bin/python -m pytest -q -p tests.cpu_times

On a shared machine wall times follow the load; CPU seconds (this process plus the children it reaped:
subprocesses a test ran and waited for) say what a test costs on a free core. One JSON line per phase is
appended to $CPU_TIMES.lines as it ends (a run still going can be read); $CPU_TIMES gets the whole table and
the collection's cost at the end. `python -m tests.cpu_times FILE` prints the slowest tests.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

_rows: dict[str, dict[str, list[float]]] = {}
_marks: dict[str, float | dict] = {}


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


def pytest_sessionstart(session):
    _marks["start"] = time.monotonic()


def pytest_collection(session):
    _marks["collect_start"] = (time.monotonic(), *_cpu())


def pytest_collection_finish(session):
    wall, own, reaped = _marks["collect_start"]
    own1, reaped1 = _cpu()
    _marks["collect"] = {
        "wall": round(time.monotonic() - wall, 2),
        "cpu": round(own1 - own, 2),
        "cpu_children": round(reaped1 - reaped, 2),
    }


def _measure(item, phase):
    wall = time.monotonic()
    own, reaped = _cpu()
    yield
    own1, reaped1 = _cpu()
    row = [round(time.monotonic() - wall, 3), round(own1 - own, 3), round(reaped1 - reaped, 3)]
    _rows.setdefault(item.nodeid, {})[phase] = row
    out = os.environ.get("CPU_TIMES")
    if out:
        with open(f"{out}.lines", "a") as f:
            f.write(json.dumps([item.nodeid, phase, *row, round(os.getloadavg()[0], 1)]) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _measure(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _measure(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _measure(item, "teardown")


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("CPU_TIMES")
    if not out:
        return
    own, reaped = _cpu()
    table = {
        "wall": round(time.monotonic() - _marks["start"], 1),
        "cpu": round(own, 1),
        "cpu_children": round(reaped, 1),
        "collect": _marks.get("collect"),
        "exitstatus": int(exitstatus),
        "tests": _rows,
    }
    Path(out).write_text(json.dumps(table) + "\n")


def slowest(path: str, n: int = 20) -> str:
    """The `n` slowest tests of a $CPU_TIMES file (or its .lines): wall and CPU seconds, setup included."""
    rows: dict[str, dict[str, list[float]]] = {}
    if path.endswith(".lines"):
        for line in Path(path).read_text().splitlines():
            nodeid, phase, *row = json.loads(line)
            rows.setdefault(nodeid, {})[phase] = row[:3]
    else:
        rows = json.loads(Path(path).read_text())["tests"]
    total = []
    for nodeid, phases in rows.items():
        wall = sum(p[0] for p in phases.values())
        cpu = sum(p[1] + p[2] for p in phases.values())
        total.append((wall, cpu, phases.get("setup", [0])[0], nodeid))
    total.sort(reverse=True)
    lines = ["| wall s | CPU s | of it setup (wall) | test |", "|---:|---:|---:|---|"]
    lines += [f"| {w:.1f} | {c:.1f} | {s:.1f} | `{k}` |" for w, c, s, k in total[:n]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(slowest(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20))
