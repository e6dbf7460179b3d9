"""How many Cycles samples the Blender engine needs: grain and cost per sample count.

The same scenes are rendered at each sample count and once at a high reference count. The grain of a count
n is the RMS difference from the reference, corrected for the reference's own noise (variance ~ 1/samples:
rms^2 = g_n^2 + g_ref^2 = g_n^2 (1 + n/ref)), in 8-bit code values, at 320x240 and after the 64x64 resize
every loader of this project applies (trainers.data.iclevr.RESIZE), which is what the judge sees. The bias is
the mean signed difference at 64x64 (clipped fireflies would show there). CPU seconds are Blender's own
(children's rusage), start-up included, per image.

    nice -n 10 python bench/blender_samples.py --samples 4 8 16 --reference 128 --scenes 1
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainers.data.blender import render_scenes
from trainers.data.iclevr import RESIZE
from trainers.data.render import training_scene
from trainers.data.scene import to_json


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load(path: Path, size: int | None) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size, size), RESIZE)
        return np.asarray(rgb, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--reference", type=int, default=128)
    parser.add_argument("--scenes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    scenes = [to_json(training_scene(args.seed, i)) for i in range(args.scenes)]
    with tempfile.TemporaryDirectory() as tmp:
        renders, cost = {}, {}
        for n in [*args.samples, args.reference]:
            cpu, wall = children_cpu(), time.perf_counter()
            files = render_scenes(scenes, Path(tmp) / f"s{n}", samples=n, progress=False)
            images = [p for f in files for p in f.images]
            cost[n] = ((children_cpu() - cpu) / len(images), (time.perf_counter() - wall) / len(images))
            renders[n] = images
        print(f"{args.scenes} scene(s) of seed {args.seed}, {len(renders[args.reference])} images, 320x240")
        print("| samples | CPU s / image | wall s / image | grain 320x240 | grain 64x64 | bias 64x64 |")
        print("|---|---|---|---|---|---|")
        for n in args.samples:
            row = []
            for size in (None, 64):
                d = np.concatenate(
                    [
                        (load(a, size) - load(b, size)).ravel()
                        for a, b in zip(renders[n], renders[args.reference], strict=True)
                    ]
                )
                row.append(float(np.sqrt(np.mean(d**2)) / np.sqrt(1 + n / args.reference)))
            bias = float(np.mean(d))
            print(
                f"| {n} | {cost[n][0]:.2f} | {cost[n][1]:.2f} | {row[0]:.2f} | {row[1]:.2f} | {bias:+.2f} |"
            )
        print(
            f"| {args.reference} (reference) | {cost[args.reference][0]:.2f} | {cost[args.reference][1]:.2f} "
            "| - | - | - |"
        )


if __name__ == "__main__":
    main()
