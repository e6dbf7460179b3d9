"""A search home's caches are built once when drivers share it (search/prepare._only_one): bench seeds side by
side or two searches started together must not render or fit the same thing twice, and a driver killed while
building must not leave the others waiting on it."""

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from search.prepare import _atomic_dir


def _build_slowly(target: str, counter: str, started: str, hold: float) -> None:
    def build(out: Path) -> None:
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        Path(started).touch()
        out.mkdir(parents=True)
        time.sleep(hold)
        (out / "done").write_text("ok")

    _atomic_dir(Path(target), build, lambda line: print(line, flush=True))


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_two_drivers_build_a_cache_entry_once_and_the_second_waits_for_it(tmp_path, capfd):
    target, counter, started = tmp_path / "data" / "set", tmp_path / "builds", tmp_path / "started"
    ctx = mp.get_context("fork")
    first = ctx.Process(target=_build_slowly, args=(str(target), str(counter), str(started), 1.5))
    first.start()
    _wait_for(started)  # the first holds the lock and is building
    second = ctx.Process(target=_build_slowly, args=(str(target), str(counter), str(started), 0.0))
    second.start()
    for proc in (first, second):
        proc.join(30)
        assert proc.exitcode == 0
    assert counter.read_text().split() == [str(first.pid)]  # built once, by the first
    assert (target / "done").read_text() == "ok"
    assert f"waiting for another driver building {target}" in capfd.readouterr().out
    assert not list(target.parent.glob(".set.*.tmp"))


def test_a_driver_killed_while_building_leaves_no_lock_and_no_cache_hit(tmp_path):
    target, counter, started = tmp_path / "set", tmp_path / "builds", tmp_path / "started"
    ctx = mp.get_context("fork")
    doomed = ctx.Process(target=_build_slowly, args=(str(target), str(counter), str(started), 60.0))
    doomed.start()
    _wait_for(started)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(10)
    assert not target.exists()  # its half-built folder is no cache hit
    began = time.monotonic()
    _build_slowly(str(target), str(counter), str(started), 0.0)  # the kernel dropped the dead one's lock
    assert time.monotonic() - began < 10
    assert counter.read_text().split() == [str(doomed.pid), str(os.getpid())]
    assert (target / "done").read_text() == "ok"
    assert not list(tmp_path.glob(".set.*.tmp"))  # the dead one's scratch folder went with it
