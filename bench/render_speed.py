"""Benchmark: synthetic i-CLEVR rendering speed per core, end to end (sampling, ray casting, PNG writes).

    python bench/render_speed.py [--scenes 200] [--big-scenes 40] [--seed 0]

Renders `--scenes` training scenes (3 images each) at 32x32 (the embedded default's size) and 64x64, and
`--big-scenes` at the original 320x240, each with workers=1 into a temporary folder, and prints images/s.
The target is >= 50 images/s per core at 64x64: a 10k-scene set then takes under 10 minutes on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from trainers.data.render import render_training_set


def images_per_second(out: Path, *, scenes: int, size, seed: int) -> tuple[float, float]:
    """(by wall clock, by this process's CPU time). On a shared machine the wall-clock rate also
    counts time the core spent on other jobs; the CPU-time rate is what one free core would do."""
    wall, cpu = time.perf_counter(), time.process_time()
    render_training_set(out, scenes=scenes, seed=seed, size=size, workers=1, progress=False)
    return 3 * scenes / (time.perf_counter() - wall), 3 * scenes / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="scenes at 32x32 and 64x64 (3 images each)")
    parser.add_argument("--big-scenes", type=int, default=40, help="scenes at 320x240 (0 to skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: the first scene pays for caches (ray grids, the sRGB table).
        render_training_set(Path(tmp) / "warm", scenes=1, seed=args.seed, size=64, workers=1, progress=False)
        runs = [
            ("32x32", 32, args.scenes),
            ("64x64", 64, args.scenes),
            ("320x240", (320, 240), args.big_scenes),
        ]
        for name, size, scenes in runs:
            if scenes > 0:
                wall, cpu = images_per_second(Path(tmp) / name, scenes=scenes, size=size, seed=args.seed)
                print(
                    f"{name}: {3 * scenes} images, {wall:.1f} images/s wall, {cpu:.1f} per CPU-second (workers=1)"
                )


if __name__ == "__main__":
    main()
