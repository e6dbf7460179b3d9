"""Fidelity of the fast renderer against Blender on the same scenes (issue 13): one command, cached stages.

    nice -n 10 .venv/bin/python bench/render_fidelity.py --root data/render-fidelity [--scenes 200]

Stages (each skipped when its output exists, so a rerun only re-scores):
1. `--scenes` i-CLEVR scene descriptions (seed `--seed`) in ROOT/scenes, and as many of another seed for
   the noise floor; or, with `--blender DIR`, the first `--scenes` complete scenes of a Blender set made
   by `python -m trainers.data render --engine blender` (e.g. the reference set);
2. both sets rendered at 320x240 by the fast engine, the first also by Blender (`--samples`, masks on;
   with `--blender` and no masks there, masks of `--mask-scenes` scenes at 1 sample);
3. a judge fitted on fast renders at 64x64 (`--judge` to bring one; else `--train-scenes` rendered and
   fitted with `python -m trainers.evaluator fit` and `--fit-args`);
4. figures: (a) the judge's held-out accuracy (fast) and its accuracy on the fidelity scenes by each engine
   (320x240 resized to 64x64, as every folder is read), (b) FID in the judge's feature space between the
   engines and between the two fast seeds, (c) per-object pixel-centre error between the engines at
   320x240 (fast: ray-cast id buffer; Blender: its object-index masks); and a side-by-side contact sheet;
5. where Blender's renders lose accuracy: `breakdown` (by object count, class, Blender-only confusions),
   `sphere_profile` (a sphere's grey level from centre to limb by each engine), `shading_by_ndotv` (by n.v
   and shape), `sphere_profile_swap` (the judge with that profile swapped between the engines, and with
   noise added / blur) and, with `--what-if-rubber-specular`, the profile of re-rendered fast frames.
Prints one JSON record (and writes it to ROOT/record.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainers.data.render import (
    copy_spec,
    pixel_centres,
    render_scene_files,
    render_training_set,
    training_scene,
    write_json,
    write_png,
)
from trainers.data.scene import load_scene, save_scene, to_json

SHEET_SCENES = 6
# A sphere's disc in rings of r / R (R: the radius of its silhouette at 320x240), for the shading profile.
RING_EDGES = np.linspace(0.0, 1.0, 6)
RING_MIDS = (RING_EDGES[:-1] + RING_EDGES[1:]) / 2


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 1)


def write_scenes(folder: Path, *, seed: int, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"CLEVR_fid_{i:06d}.json" for i in range(n)]
    for i, p in enumerate(paths):
        if not p.is_file():
            save_scene(p, training_scene(seed, i))
    return paths


def blender_set(scene_files: list[Path], out: Path, *, samples: int, shadows: bool) -> None:
    """The scenes by Blender in the course layout (images/, train.json, spec files) plus masks/."""
    from trainers.data.blender import render_scenes

    scenes = [load_scene(p) for p in scene_files]
    render_scenes(
        [to_json(s) for s in scenes],
        out / "images",
        names=[p.stem for p in scene_files],
        masks=out / "masks",
        samples=samples,
        shadows=shadows,
        skip_done=True,
    )
    index = {
        f"{p.stem}_{k}.png": s.labels[: k + 1]
        for p, s in zip(scene_files, scenes, strict=True)
        for k in range(3)
    }
    copy_spec(out)
    write_json(out / "train.json", index)


def adopt_blender_set(src: Path, out: Path, *, limit: int) -> list[Path]:
    """The first `limit` complete scenes of a Blender set in the course layout (its scenes/*.json and all
    three images in iclevr/ or images/), linked into out/images with a train.json; their scene files."""
    images = src / "iclevr" if (src / "iclevr").is_dir() else src / "images"
    chosen = []
    for p in sorted((src / "scenes").glob("*.json")):
        if all((images / f"{p.stem}_{k}.png").is_file() for k in range(3)):
            chosen.append(p)
        if len(chosen) == limit:
            break
    (out / "images").mkdir(parents=True, exist_ok=True)
    index = {}
    for p in chosen:
        labels = load_scene(p).labels
        for k in range(3):
            name = f"{p.stem}_{k}.png"
            target = out / "images" / name
            if not target.exists():
                try:
                    os.link(images / name, target)
                except OSError:
                    shutil.copyfile(images / name, target)
            index[name] = labels[: k + 1]
    copy_spec(out)
    write_json(out / "train.json", index)
    return chosen


def blender_masks(scene_files: list[Path], out: Path) -> None:
    """Object-index masks by Blender for these scenes (1 sample: the index pass needs no more)."""
    from trainers.data.blender import render_scenes

    render_scenes(
        [to_json(load_scene(p)) for p in scene_files],
        out / "images",
        names=[p.stem for p in scene_files],
        masks=out / "masks",
        samples=1,
        skip_done=True,
        progress=False,
    )


def centre_errors(scene_files: list[Path], blender: Path) -> dict:
    """Per object and image: distance (px at 320x240) between the fast engine's and Blender's visible-pixel
    centres, and the relative difference of visible pixel counts."""
    from trainers.data.blender import object_pixels, read_mask
    from trainers.data.raycast import object_id_buffer

    dist, count_diff = [], []
    for p in scene_files:
        scene = load_scene(p)
        for k in range(1, len(scene.objects) + 1):
            prefix = scene.prefix(k)
            fast = pixel_centres(prefix, size=(320, 240))
            fast_counts = np.bincount(
                (object_id_buffer(prefix, size=(320, 240)) + 1).ravel(), minlength=k + 1
            )[1:]
            ids = read_mask(blender / "masks" / f"{p.stem}_{k - 1}.png")
            for j, (count, centre) in enumerate(object_pixels(ids, k)):
                if centre is None or np.isnan(fast[j]).any():
                    continue
                dist.append(float(np.hypot(*(fast[j] - centre))))
                count_diff.append(abs(int(fast_counts[j]) - count) / max(count, 1))
    d = np.array(dist)
    return {
        "objects": len(d),
        "centre_px_mean": round(float(d.mean()), 3),
        "centre_px_median": round(float(np.median(d)), 3),
        "centre_px_p95": round(float(np.percentile(d, 95)), 3),
        "centre_px_max": round(float(d.max()), 3),
        "count_rel_diff_median": round(float(np.median(count_diff)), 4),
    }


def paired_gap_ci(fast: dict, blender: dict, *, draws: int = 2000) -> list[float]:
    """95% bootstrap interval of accuracy(Blender) - accuracy(fast) over the same images, resampling
    whole scenes (an image's _0.._2 share their objects)."""
    scenes: dict[str, list[str]] = {}
    for f in fast:
        scenes.setdefault(Path(f).stem.rsplit("_", 1)[0], []).append(f)
    groups = [
        np.array([[fast[f][0], blender[f][0], fast[f][1]] for f in files]).sum(0) for files in scenes.values()
    ]
    g = np.array(groups)  # (scenes, 3): fast hits, Blender hits, labels
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(g), (draws, len(g)))
    gaps = (g[pick, 1].sum(1) - g[pick, 0].sum(1)) / g[pick, 2].sum(1)
    return [round(float(v), 4) for v in np.percentile(gaps, [2.5, 97.5])]


def breakdown(scores: dict, labels: np.ndarray, classes: list[str]) -> dict:
    """Where each engine's images lose accuracy, on the same images: accuracy by object count, the classes
    missed most often (label misses per 100 of that class's labels), and for Blender the confusions
    (true class missed -> class ranked in its place, images with one miss) on images whose fast render
    of the same scene prefix had no miss."""
    import torch

    k = labels.sum(1).astype(int)
    missed: dict = {}
    out: dict = {"acc_by_objects": {}, "miss_per_100_labels": {}}
    for name, s in scores.items():
        top = torch.argsort(torch.as_tensor(s), dim=1, descending=True, stable=True)
        rows = []
        for i in range(len(k)):
            pred = set(top[i, : k[i]].tolist())
            true = set(np.flatnonzero(labels[i]).tolist())
            rows.append((sorted(true - pred), sorted(pred - true)))
        missed[name] = rows
        lost = np.array([len(m) for m, _ in rows])
        out["acc_by_objects"][name] = {
            int(kk): round(1 - lost[k == kk].sum() / (kk * (k == kk).sum()), 4)
            for kk in sorted(set(k.tolist()))
        }
        per_class = np.zeros(len(classes))
        for m, _ in rows:
            per_class[m] += 1
        rate = 100 * per_class / np.maximum(labels.sum(0), 1)
        out["miss_per_100_labels"][name] = {
            classes[c]: round(float(rate[c]), 1) for c in np.argsort(-rate, kind="stable")[:8]
        }
    pairs: dict[str, int] = {}
    for (m_fast, _), (m, w) in zip(missed["fast"], missed["blender"], strict=True):
        if not m_fast and len(m) == 1:
            key = f"{classes[m[0]]} -> {classes[w[0]]}"
            pairs[key] = pairs.get(key, 0) + 1
    out["blender_only_confusions"] = dict(sorted(pairs.items(), key=lambda kv: -kv[1])[:12])
    out["blender_only_miss_images"] = sum(
        1 for (a, _), (b, _) in zip(missed["fast"], missed["blender"], strict=True) if b and not a
    )
    out["fast_only_miss_images"] = sum(
        1 for (a, _), (b, _) in zip(missed["fast"], missed["blender"], strict=True) if a and not b
    )
    return out


def sphere_rings(scene, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image _k's visible spheres at 320x240: (their visible pixels, every pixel's r / R from the centre of
    the sphere's unoccluded silhouette, clipped to 1). Spheres under 5 pixels are left out."""
    from trainers.data.raycast import object_id_buffer

    prefix = scene.prefix(k + 1)
    ids = object_id_buffer(prefix, size=(320, 240))
    yy, xx = np.mgrid[:240, :320]
    out = []
    for j, o in enumerate(prefix.objects):
        visible = ids == j
        if o.shape != "sphere" or visible.sum() < 5:
            continue
        alone = object_id_buffer(replace(prefix, objects=(o,)), size=(320, 240)) == 0
        ys, xs = np.nonzero(alone)
        r = np.hypot(yy - ys.mean(), xx - xs.mean()) / np.sqrt(alone.sum() / np.pi)
        out.append((visible, np.minimum(r, 1.0)))
    return out


def grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def sphere_profile(scene_files: list[Path], fast: Path, blender: Path) -> dict:
    """The rubber sphere's shading from centre to limb, by each engine: mean grey level (8-bit, mean of
    R, G, B) per ring of r / R over the one-object images (_0) showing a sphere, and Blender / fast."""
    sums = {"fast": np.zeros(len(RING_MIDS)), "blender": np.zeros(len(RING_MIDS))}
    n = 0
    for p in scene_files:
        scene = load_scene(p)
        rings = sphere_rings(scene, 0)
        if not rings:
            continue
        visible, r = rings[0]
        ring = np.digitize(r, RING_EDGES[1:-1])
        for name, folder in (("fast", fast), ("blender", blender)):
            level = grey(folder / "images" / f"{p.stem}_0.png").mean(2)
            sums[name] += [level[visible & (ring == i)].mean() for i in range(len(RING_MIDS))]
        n += 1
    ratio = sums["blender"] / sums["fast"]
    return {
        "images": n,
        "rings_r_over_R": [f"{a:.1f}-{b:.1f}" for a, b in zip(RING_EDGES[:-1], RING_EDGES[1:], strict=True)],
        "fast": [round(float(v), 1) for v in sums["fast"] / n],
        "blender": [round(float(v), 1) for v in sums["blender"] / n],
        "blender_over_fast": [round(float(v), 3) for v in ratio],
    }


NDOTV_EDGES = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 1.0])


def shading_by_ndotv(scene_files: list[Path], fast: Path, blender: Path) -> dict:
    """Blender / fast grey level by n.v (surface normal . direction to the camera) and shape, over the
    one-object frames (_0), on object pixels at least 2 px inside the silhouette: tells a material's
    view-dependent term (the same at equal n.v on every shape) from a shape's own difference."""
    from trainers.data.raycast import HIT, NORMAL, bounding_rect, camera_rays, project

    sums: dict = {}
    for p in scene_files:
        scene = load_scene(p).prefix(1)
        o, cam = scene.objects[0], scene.view
        rect = bounding_rect(project(o.corners(), cam, 320, 240), 320, 240)
        if rect is None:
            continue
        d = camera_rays(cam, 320, 240, rect)
        eye = tuple(float(c) for c in cam.position)
        t = HIT[o.shape](o, eye, d)
        hit = np.isfinite(t)
        inner = hit.copy()
        for _ in range(2):  # erode: keep pixels whose 4 neighbours are object too
            e = inner.copy()
            e[1:] &= inner[:-1]
            e[:-1] &= inner[1:]
            e[:, 1:] &= inner[:, :-1]
            e[:, :-1] &= inner[:, 1:]
            e[[0, -1]] = False
            e[:, [0, -1]] = False
            inner = e
        with np.errstate(invalid="ignore"):
            n = NORMAL[o.shape](o, [eye[i] + t * d[i] for i in range(3)])
            ndv = -(n[0] * d[0] + n[1] * d[1] + n[2] * d[2])
        band = np.digitize(ndv, NDOTV_EDGES)
        for name, folder in (("fast", fast), ("blender", blender)):
            level = grey(folder / "images" / f"{p.stem}_0.png").mean(2)[rect]
            for i in range(1, len(NDOTV_EDGES)):
                m = inner & (band == i)
                acc = sums.setdefault((o.shape, i), {"fast": [0.0, 0], "blender": [0.0, 0]})[name]
                acc[0] += float(level[m].sum())
                acc[1] += int(m.sum())
    out: dict = {
        "n_dot_v": [f"{a:.1f}-{b:.1f}" for a, b in zip(NDOTV_EDGES[:-1], NDOTV_EDGES[1:], strict=True)]
    }
    for shape in ("sphere", "cube", "cylinder"):
        row = []
        for i in range(1, len(NDOTV_EDGES)):
            v = sums.get((shape, i))
            ok = v is not None and min(v["fast"][1], v["blender"][1]) >= 1000  # pixels, summed over frames
            row.append(
                round((v["blender"][0] / v["blender"][1]) / (v["fast"][0] / v["fast"][1]), 3) if ok else None
            )
        out[f"{shape}_blender_over_fast"] = row
    return out


def sphere_profile_what_if(scene_files: list[Path], blender: Path, specular: tuple[float, float]) -> dict:
    """`sphere_profile` against fast frames re-rendered with the rubber's highlight set to `specular`
    (strength, Blinn-Phong exponent; trainers.data.render.RUBBER_SPECULAR): what that renderer change would
    do to the sphere's shading, measured without making it (the constant is restored afterwards)."""
    from trainers.data import render

    spheres = [p for p in scene_files if load_scene(p).objects[0].shape == "sphere"]
    saved, render.RUBBER_SPECULAR = render.RUBBER_SPECULAR, specular
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "images").mkdir()
            for p in spheres:
                frame = render.render_scene(load_scene(p), size=(320, 240), counts=(1,))[0]
                write_png(Path(tmp) / "images" / f"{p.stem}_0.png", frame)
            return {"rubber_specular": list(specular)} | sphere_profile(spheres, Path(tmp), blender)
    finally:
        render.RUBBER_SPECULAR = saved


def profile_swap(ev, scene_files: list[Path], fast: Path, blender: Path, ratio: list[float]) -> dict:
    """Does the sphere's shading profile explain the gap? The judge's accuracy on these scenes' images with
    `ratio` (Blender / fast per ring) divided out of every visible sphere's pixels in Blender's renders, and
    multiplied into the fast renders' (interpolated in r / R; then read at 64x64 as every folder is); and,
    against the other suspect, noise: the fast renders with Blender's grain added, Blender's blurred."""
    from trainers.evaluator import as_model_input, topk_accuracy

    gain = np.asarray(ratio)
    names = ("fast", "blender", "fast_with_blender_profile", "blender_with_fast_profile")
    images = {name: [] for name in (*names, "fast_with_noise_sd8", "blender_blurred_1.5px")}
    rng = np.random.default_rng(0)
    labels = []
    classes = json.loads((fast / "objects.json").read_text())
    for p in scene_files:
        scene = load_scene(p)
        for k in range(3):
            onehot = np.zeros(len(classes), dtype=np.float32)
            onehot[[classes[name] for name in scene.labels[: k + 1]]] = 1
            labels.append(onehot)
            rings = sphere_rings(scene, k)
            for name, folder, power in (("fast", fast, 1), ("blender", blender, -1)):
                a = grey(folder / "images" / f"{p.stem}_{k}.png")
                images[name].append(small(a))
                if name == "fast":  # Blender's 4-sample grain is ~8 code values RMS at 320x240
                    images["fast_with_noise_sd8"].append(small(a + rng.normal(0, 8, a.shape)))
                else:
                    blurred = Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
                    images["blender_blurred_1.5px"].append(small(np.asarray(blurred, dtype=np.float64)))
                for visible, r in rings:
                    a[visible] *= (np.interp(r[visible], RING_MIDS, gain) ** power)[:, None]
                images["fast_with_blender_profile" if power == 1 else "blender_with_fast_profile"].append(
                    small(a)
                )
    y = np.stack(labels)
    out = {"scenes": len(scene_files)}
    for name, arrays in images.items():
        out[f"acc_{name}"] = round(topk_accuracy(ev.scores(as_model_input(np.stack(arrays))), y), 4)
    return out


def small(a: np.ndarray) -> np.ndarray:
    """A 320x240 float frame as the folders are read: 8-bit, resized to 64x64 (bilinear)."""
    im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    return np.asarray(im.resize((64, 64), Image.BILINEAR))


def contact_sheet(scene_files: list[Path], fast: Path, blender: Path, out: Path) -> None:
    """Rows of scenes, each: fast _0.._2 | Blender _0.._2 at 160x120."""
    w, h, gap = 160, 120, 6
    rows = scene_files[:SHEET_SCENES]
    sheet = Image.new("RGB", (6 * w + gap, len(rows) * h + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "fast engine (trainers.data.render)", fill="black")
    draw.text((3 * w + gap + 4, 2), "Blender 3.4.1, generator's assets", fill="black")
    for r, p in enumerate(rows):
        for k in range(3):
            for c, folder in enumerate((fast, blender)):
                with Image.open(folder / "images" / f"{p.stem}_{k}.png") as im:
                    tile = im.convert("RGB").resize((w, h), Image.BILINEAR)
                sheet.paste(tile, (c * (3 * w + gap) + k * w, 16 + r * h))
    sheet.save(out, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("data/render-fidelity"))
    p.add_argument("--scenes", type=int, default=200, help="fidelity scenes (3 images each)")
    p.add_argument("--seed", type=int, default=101, help="fidelity scenes' seed (the floor uses seed + 1)")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples for the Blender renders")
    p.add_argument("--shadows", choices=("on", "off"), default="on")
    p.add_argument("--judge", type=Path, help="an evaluator fitted on fast renders (default: fit one)")
    p.add_argument("--train-scenes", type=int, default=8000, help="fast 64x64 scenes to fit the judge on")
    p.add_argument("--fit-args", default="", help="extra arguments for `python -m trainers.evaluator fit`")
    p.add_argument(
        "--blender",
        type=Path,
        help="use this Blender set (course layout with scenes/) instead of rendering one",
    )
    p.add_argument("--mask-scenes", type=int, default=30, help="with --blender and no masks: scenes to mask")
    p.add_argument(
        "--swap-scenes", type=int, default=300, help="scenes for the sphere-profile swap check (0: skip)"
    )
    p.add_argument(
        "--what-if-rubber-specular",
        type=float,
        nargs=2,
        metavar=("STRENGTH", "EXPONENT"),
        help="also measure the sphere profile with the fast renderer's rubber highlight set to this",
    )
    p.add_argument("--renders-only", action="store_true", help="stop after the renders (stages 1-2)")
    p.add_argument("--sheet", type=Path, default=Path("docs/render-fidelity.png"))
    args = p.parse_args()
    root = args.root
    os.environ.setdefault("CGAN_SEARCH_CACHE", str((root / "cache").absolute()))  # packs beside the data
    record: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "scenes": args.scenes,
        "samples": args.samples,
        "shadows": args.shadows,
    }

    if args.blender is not None:
        scene_files = adopt_blender_set(args.blender, root / "blender", limit=args.scenes)
        record["blender_set"] = str(args.blender)
        record["scenes"] = len(scene_files)
        settings = args.blender / "blender.json"
        if settings.is_file():  # the set's own settings, not this command's defaults
            made = json.loads(settings.read_text())
            record["samples"], record["shadows"] = made.get("samples"), made.get("shadows")
    else:
        scene_files = write_scenes(root / "scenes", seed=args.seed, n=args.scenes)
    floor_files = write_scenes(root / "scenes-floor", seed=args.seed + 1, n=len(scene_files))
    for name, files in (("fast", scene_files), ("fast-floor", floor_files)):
        if not (root / name / "train.json").is_file():
            _, record[f"{name}_render_seconds"] = timed(
                render_scene_files, files, root / name, size=(320, 240), progress=False
            )
    if not (root / "blender" / "train.json").is_file():
        _, record["blender_render_seconds"] = timed(
            blender_set, scene_files, root / "blender", samples=args.samples, shadows=args.shadows == "on"
        )
    masks = args.blender if args.blender is not None and (args.blender / "masks").is_dir() else None
    mask_files = scene_files
    if args.blender is None:
        masks = root / "blender"
    elif masks is None:
        mask_files = scene_files[: args.mask_scenes]
        blender_masks(mask_files, root / "masks-only")
        masks = root / "masks-only"

    if args.renders_only:
        print(json.dumps(record, indent=2))
        return

    from trainers.data import load_dataset
    from trainers.evaluator import Evaluator, as_model_input, frechet_distance, read_sidecar, topk_accuracy
    from trainers.evaluator.__main__ import main as evaluator_main

    judge = args.judge
    if judge is None:
        train = root / f"train-64-{args.train_scenes}"
        if not (train / "train.json").is_file():
            _, record["train_render_seconds"] = timed(
                render_training_set, train, scenes=args.train_scenes, seed=0, size=64, progress=False
            )
        judge = train / "evaluator.pt"
        if not judge.is_file():
            rc, record["fit_wall_seconds"] = timed(
                evaluator_main, ["fit", "--data", str(train), "--out", str(judge), *args.fit_args.split()]
            )
            assert rc == 0, f"fit failed with exit code {rc}"
    side = read_sidecar(judge)
    ev = Evaluator.load(judge)
    record |= {
        "judge": str(judge),
        "judge_heldout_acc": side["heldout_acc"],
        "judge_n_train": side["n_train"],
    }
    record["judge_epochs"], record["judge_width"] = side["epochs"], side["width"]

    feats, hits, all_scores, datasets = {}, {}, {}, {}
    for name in ("fast", "blender", "fast-floor"):
        data = datasets[name] = load_dataset(root / name, size=64, progress=False)
        scores, feats[name] = ev.scores_and_features(as_model_input(data.images))
        all_scores[name] = scores
        record[f"acc_{name.replace('-', '_')}"] = round(topk_accuracy(scores, data.labels), 4)
        k = data.labels.sum(1)
        hits[name] = {
            f: (topk_accuracy(scores[i : i + 1], data.labels[i : i + 1]) * k[i], k[i])
            for i, f in enumerate(data.files)
        }
    record["acc_gap_blender_vs_fast_ci95"] = paired_gap_ci(hits["fast"], hits["blender"])
    record["acc_gap_blender_vs_heldout"] = round(record["acc_blender"] - side["heldout_acc"], 4)
    record["acc_gap_blender_vs_fast"] = round(record["acc_blender"] - record["acc_fast"], 4)
    record["fid_fast_vs_blender"] = round(frechet_distance(feats["fast"], feats["blender"]), 3)
    record["fid_fast_vs_fast_other_seed"] = round(frechet_distance(feats["fast"], feats["fast-floor"]), 3)
    record["fid_blender_vs_fast_other_seed"] = round(
        frechet_distance(feats["blender"], feats["fast-floor"]), 3
    )
    assert datasets["fast"].files == datasets["blender"].files
    record["breakdown"] = breakdown(
        {n: all_scores[n] for n in ("fast", "blender")},
        datasets["fast"].labels,
        list(datasets["fast"].classes),
    )
    record["sphere_profile"] = sphere_profile(scene_files, root / "fast", root / "blender")
    record["shading_by_ndotv"] = shading_by_ndotv(scene_files, root / "fast", root / "blender")
    if args.what_if_rubber_specular is not None:
        record["sphere_profile_what_if"] = sphere_profile_what_if(
            scene_files, root / "blender", tuple(args.what_if_rubber_specular)
        )
    if args.swap_scenes > 0:
        record["sphere_profile_swap"] = profile_swap(
            ev,
            scene_files[: args.swap_scenes],
            root / "fast",
            root / "blender",
            record["sphere_profile"]["blender_over_fast"],
        )
    record |= centre_errors(mask_files, masks)
    contact_sheet(scene_files, root / "fast", root / "blender", args.sheet)

    text = json.dumps(record, indent=2)
    print(text)
    (root / "record.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
