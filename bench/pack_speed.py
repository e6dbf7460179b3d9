"""Benchmark: loading a packed Parquet cache vs decoding the dataset's PNGs, measured in one run.

    python bench/pack_speed.py [--data DIR] [--scenes 300] [--render-size 320x240] [--size 64] [--repeats 3]

Without --data it renders a synthetic training set first (the original's 320x240 frames by default, since
decoding full frames is what a real i-CLEVR folder costs). Both paths produce the same uint8 array; the
ratio of their best times is the figure BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from trainers.data import load_packed, read_iclevr, write_packed
from trainers.data.__main__ import parse_size


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing dataset folder (default: render one)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes to render when --data is absent")
    parser.add_argument("--render-size", type=parse_size, default=(320, 240))
    parser.add_argument("--size", type=int, default=64, help="training resolution")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from trainers.data.render import render_training_set

            root = render_training_set(Path(tmp) / "ds", scenes=args.scenes, seed=0, size=args.render_size)
        t_png, from_png = best_of(args.repeats, lambda: read_iclevr(root, size=args.size, progress=False))
        pack_path = write_packed(from_png, Path(tmp) / "pack.parquet")
        t_pack, from_pack = best_of(args.repeats, lambda: load_packed(pack_path))
        assert np.array_equal(from_png.images, from_pack.images)
        n = len(from_png)
        print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}")
        print(f"images: {n} PNGs from {root} -> {args.size}x{args.size}")
        print(f"decode PNGs (threads={os.cpu_count()}): {t_png:.3f} s ({n / t_png:,.0f} img/s)")
        print(f"load pack: {t_pack:.4f} s ({n / t_pack:,.0f} img/s), {pack_path.stat().st_size / 1e6:.1f} MB")
        print(f"ratio: pack loads {t_png / t_pack:.0f}x faster")


if __name__ == "__main__":
    main()
