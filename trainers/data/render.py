"""Synthetic i-CLEVR: the generator's scenes ray cast in numpy and written in the i-CLEVR layout.

By default the world is i-CLEVR's (trainers.data.sampling: one size, rubber, the generator's placement,
margin and visibility rules) and the frame is lit as the generator's base_scene.blend lights it
(trainers.data.shading: three jittered area lamps aimed at the origin and a fixed sun, Cycles' units, the
Standard view transform). `world="clevr"` draws full CLEVR's two sizes and metal instead. A scene is a
plain description (trainers.data.scene) saved beside the images (scenes/*.json), so the Blender engine
(trainers.data.blender) can render the very same scenes.

A scene is ray cast analytically on a supersampled pixel grid (spheres, capped cylinders, bevel-shaded
boxes) with soft shadows from every lamp, shaded in linear light and written as sRGB. The frame is
always the 4:3 field of view whatever the pixel size asked for: a 64x64 render is the 320x240 view
squashed, exactly what i-CLEVR's loaders make of the real images (a full-frame resize).

Training sets follow the real layout: images/CLEVR_train_NNNNNN_{0,1,2}.png, where _1 adds one object
to the scene of _0 and _2 one more, and train.json maps each file to its labels in the order the
objects were added. Oracle renders draw one scene per label set of a label file. Every scene draws
from its own `SeedSequence([seed, index, ...])`, so files do not depend on the number of workers.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from trainers.data.errors import DataError
from trainers.data.labels import encode_labels, load_vocab, read_json
from trainers.data.raycast import (
    HIT,
    MIN_SIZE,
    NORMAL,
    bounding_rect,
    camera_hits,
    camera_rays,
    meet,
    object_id_buffer,
    parse_size,
    pixel_centres,
    project,
)
from trainers.data.sampling import MAX_OBJECTS, MIN_PIXELS, parse_label, sample_scene, scene_rng
from trainers.data.scene import (
    CAMERA_LOCATION,
    COLORS,
    MATERIALS,
    SHAPES,
    WORLDS,
    Scene,
    SceneObject,
    from_json,
    load_scene,
    save_scene,
    to_json,
)
from trainers.data.shading import (
    FLOOR_BOUNCE,
    GROUND_ALBEDO,
    OBJECT_AMBIENT,
    SHADOW_FILL,
    indirect,
    irradiance,
    lamp_offsets,
    lamp_setups,
    shadow_extent,
    shadow_rays,
)

__all__ = [
    "CAMERA_LOCATION",
    "COLORS",
    "MATERIALS",
    "MAX_OBJECTS",
    "MIN_SIZE",
    "SHAPES",
    "WORLDS",
    "Scene",
    "SceneObject",
    "class_names",
    "from_json",
    "load_scene",
    "min_pixels",
    "object_id_buffer",
    "parse_label",
    "parse_size",
    "pixel_centres",
    "render_label_sets",
    "render_scene",
    "render_scene_files",
    "render_training_set",
    "sample_scene",
    "save_scene",
    "scene_rng",
    "to_json",
    "training_scene",
]

SPEC_DIR = Path(__file__).parent / "spec"
SPEC_FILES = ("objects.json", "test.json", "new_test.json")
# Film grain (sRGB code values at 320x240): Blender's path tracer leaves noise that also hides 8-bit
# banding on the smooth floor. Smaller renders stand for averaged big ones, so it shrinks with them.
GRAIN = 1.5
# ...but never below this (code values) at any size: Blender's frames read at 64x64 keep visible
# path-tracing noise (mean |high-pass| 0.64-1.17 codes on the floor of the 4-sample reference set against
# 0.35 for our 64x64 renders with shrunk grain), and a judge fitted on noise-free frames loses accuracy on them.
GRAIN_MIN = 1.0
# Rubber (the generator's node group: diffuse mixed with a Beckmann glossy of roughness 0.35^0.5, colour
# 0.8, by a Fresnel of IOR 1.2): the glossy lobe is so broad that it acts as a white share of the diffuse
# colour, which lifts dark channels (red's green and blue) as in Blender's renders. Share fitted to the
# mean colour of each palette colour's objects in 40 Blender scenes at 64x64 (within ~2 code values).
RUBBER_GLOSS = 0.025
# No separate highlight on rubber (strength 0): a Blinn-Phong lobe of 0.02 landed near every sphere's centre,
# which Blender's renders do not show (bench/render_fidelity.py's sphere_profile: Blender / fast 0.945 at the
# centre, 0.989 with the lobe off); the broad glossy is already the white share above.
RUBBER_SPECULAR = (0.0, 10.0)  # (strength, Blinn-Phong exponent)
METAL_DIFFUSE = 0.15  # full CLEVR's metal keeps little diffuse colour; its look comes from reflections
METAL_SPECULAR = (1.2, 60.0)


def supersampling(width: int, height: int) -> int:
    """Samples per pixel side. Small renders stand in for big frames shrunk to 64x64, which average
    ~20 source pixels each, so they need more samples than a full-size frame for the same smoothness."""
    return 4 if max(width, height) <= 128 else 3


def min_pixels(width: int, height: int) -> int:
    """The generator's 200 visible pixels at 320x240, scaled to a width x height render."""
    return max(2, math.ceil(MIN_PIXELS * width * height / (320 * 240)))


# ---------------------------------------------------------------------------------------------------
# Shading


def _specular(n, view, w, strength: float, power: float):
    """Blinn-Phong lobe for unit view direction `view` (camera to point) and light direction w."""
    hx, hy, hz = w[0] - view[0], w[1] - view[1], w[2] - view[2]
    n_dot_h = (n[0] * hx + n[1] * hy + n[2] * hz) / np.sqrt(hx * hx + hy * hy + hz * hz)
    return strength * np.maximum(n_dot_h, 0) ** power


def _shade_rubber(albedo, n, view, w, e):
    """Radiance per unit irradiance `e` from one lamp: diffuse plus a faint sheen."""
    spec = _specular(n, view, w, *RUBBER_SPECULAR)
    return (albedo / math.pi) * e + spec * e


def _shade_metal(albedo, n, view, w, e):
    spec = _specular(n, view, w, *METAL_SPECULAR)
    return (albedo * (METAL_DIFFUSE / math.pi)) * e + albedo * spec * e


MATERIAL_SHADERS: dict[str, Callable] = {"rubber": _shade_rubber, "metal": _shade_metal}


def _albedo(obj: SceneObject) -> np.ndarray:
    """(3, 1) linear albedo the lamps see: RGB/255, for rubber mixed with its white glossy share."""
    albedo = np.asarray(obj.rgb, dtype=np.float32)[:, None] / 255
    if obj.material == "rubber":
        albedo = (1 - RUBBER_GLOSS) * albedo + RUBBER_GLOSS * 0.8
    return albedo.astype(np.float32)


class _Surface:
    """An object's hit samples on the supersampled grid: rect, depth, hit mask, points, normals."""

    def __init__(self, obj: SceneObject, cam, gw: int, gh: int):
        hits = camera_hits(obj, cam, gw, gh)
        self.rect = None if hits is None else hits.rect
        if hits is None or not np.isfinite(hits.t).any():
            self.rect = None
            return
        self.t = hits.t
        self.hit = np.isfinite(hits.t)
        t = hits.t[self.hit]
        self.view = tuple(a[self.hit] for a in camera_rays(cam, gw, gh, hits.rect))
        self.points = tuple(float(c) + t * di for c, di in zip(cam.position, self.view, strict=True))
        self.normal = NORMAL[obj.shape](obj, self.points)


def _floor_radiance_at(setups, x: float, y: float) -> np.ndarray:
    """(3,) radiance of the unshadowed floor at (x, y): what the floor bounces back onto an object."""
    p = (np.float32(x), np.float32(y), np.float32(0))
    n = (0.0, 0.0, 1.0)
    total = np.zeros(3)
    for s in setups:
        e, _ = irradiance(s, p, n)
        total += np.asarray(s.lamp.color) * float(e)
    return GROUND_ALBEDO / math.pi * total


def _downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """(..., H*ss, W*ss) -> (..., H, W) box average. Strided sums: ~10x faster than reshape + mean."""
    cols = sum(a[..., j::ss] for j in range(ss))
    return sum(cols[..., i::ss, :] for i in range(ss)) * (1 / (ss * ss))


def _occluded(obj: SceneObject, p, rays) -> np.ndarray:
    """Bool: shadow rays from points p hit obj."""
    return np.isfinite(HIT[obj.shape](obj, p, rays))


def render_scene(
    scene: Scene, *, size: int | Sequence[int], counts: Iterable[int] | None = None
) -> list[np.ndarray]:
    """uint8 (H, W, 3) images of the scene's first k objects for each k in counts (default: all).

    Geometry, lighting and shadow tests are computed once per object and lamp and shared by every image:
    an object's hit points and the shadows cast on them do not depend on which later objects exist.
    """
    width, height = parse_size(size)
    ss = supersampling(width, height)
    gw, gh = width * ss, height * ss
    cam, n_obj = scene.view, len(scene.objects)
    rng = np.random.default_rng(scene.seed)
    setups = lamp_setups(scene)
    offsets = lamp_offsets(width, height, ss, rng)
    colors = [np.asarray(s.lamp.color, dtype=np.float32)[:, None] for s in setups]

    # The floor (z = 0) behind every sample; the camera looks down, so every ray meets it.
    rays = camera_rays(cam, gw, gh)
    t = -cam.position[2] / rays[2]
    floor_p = tuple(np.float32(c) + t * r for c, r in zip(cam.position, rays, strict=True))
    floor_n = (0.0, 0.0, 1.0)
    floor_e = [irradiance(s, floor_p, floor_n)[0] for s in setups]
    floor_indirect = indirect(floor_p[0], floor_p[1])

    # Per object and lamp: which floor samples it shadows (rect on the grid, bool mask) or None.
    floor_shadow: list[list] = []
    for obj in scene.objects:
        row = []
        for s in setups:
            rect = bounding_rect(project(shadow_extent(s, obj.corners()), cam, gw, gh), gw, gh)
            if rect is None:
                row.append(None)
                continue
            p = tuple(a[rect] for a in floor_p)
            rays_l = shadow_rays(s, p, (offsets.u[rect], offsets.v[rect]))
            row.append((rect, _occluded(obj, p, rays_l)))
        floor_shadow.append(row)

    # Objects: unshadowed radiance per lamp and the shadows other objects cast on them.
    surfaces = [_Surface(o, cam, gw, gh) for o in scene.objects]
    lit: list = []  # per object: list over lamps of (3, n) radiance, and the floor bounce (3, n)
    object_shadow: dict = {}  # (s, j, lamp) -> bool (n,) or absent when j cannot reach s
    for si, (obj, surf) in enumerate(zip(scene.objects, surfaces, strict=True)):
        if surf.rect is None:
            lit.append(None)
            continue
        albedo = _albedo(obj)
        shader = MATERIAL_SHADERS[obj.material]
        per_lamp = []
        rect = surf.rect
        for li, s in enumerate(setups):
            e, w = irradiance(s, surf.points, surf.normal)
            per_lamp.append(colors[li] * shader(albedo, surf.normal, surf.view, w, e))
            for j, other in enumerate(scene.objects):
                shadow = floor_shadow[j][li]
                if j == si or shadow is None or not meet(rect, shadow[0]):
                    continue
                u, v = offsets.u[rect][surf.hit], offsets.v[rect][surf.hit]
                object_shadow[(si, j, li)] = _occluded(
                    other, surf.points, shadow_rays(s, surf.points, (u, v))
                )
        floor = _floor_radiance_at(setups, obj.x, obj.y)[:, None].astype(np.float32)
        # The lower hemisphere sees the lit floor: irradiance pi L (1 - n_z) / 2, times a fitted share
        # for the floor darkened by the object's own shadow and contact.
        bounce = (albedo / math.pi) * (FLOOR_BOUNCE * math.pi * floor) * ((1 - surf.normal[2]) / 2)
        # Upward faces see the backdrop and the far floor: the floor's own indirect light, per albedo.
        up = (1 + surf.normal[2]) / 2
        bounce = bounce + albedo * (OBJECT_AMBIENT * float(indirect(obj.x, obj.y)) / GROUND_ALBEDO) * up
        lit.append((per_lamp, bounce))

    images = []
    for k in [n_obj] if counts is None else counts:
        color = np.broadcast_to(floor_indirect, (3, gh, gw)).copy()
        for li, e in enumerate(floor_e):
            vis = np.ones((gh, gw), dtype=np.float32)
            for j in range(k):
                if floor_shadow[j][li] is not None:
                    rect, mask = floor_shadow[j][li]
                    vis[rect][mask] *= SHADOW_FILL
            color += colors[li][:, :, None] * (GROUND_ALBEDO / math.pi) * (e * vis)
        depth = np.full((gh, gw), np.inf, dtype=np.float32)
        for si in range(k):
            surf = surfaces[si]
            if surf.rect is None:
                continue
            per_lamp, bounce = lit[si]
            shade = bounce.copy()
            for li, radiance in enumerate(per_lamp):
                vis = np.ones(radiance.shape[1], dtype=np.float32)
                for j in range(k):
                    mask = object_shadow.get((si, j, li))
                    if mask is not None:
                        vis[mask] *= SHADOW_FILL
                shade += radiance * vis
            region = depth[surf.rect]
            closer = surf.t < region
            np.copyto(region, surf.t, where=closer)
            mine = closer[surf.hit]  # hit samples where s is the nearest so far
            rows, cols = np.nonzero(surf.hit)
            view = color[(slice(None), *surf.rect)]
            view[:, rows[mine], cols[mine]] = shade[:, mine]
        images.append(_to_srgb8(_downsample(color, ss), rng))
    return images


@lru_cache(maxsize=1)
def _srgb_table() -> np.ndarray:
    """sRGB code values (0-255, float) for linear values quantized to 1/4095: a table lookup beats a
    per-pixel pow, and 4096 steps are finer than the 8-bit output."""
    x = np.linspace(0, 1, 4096)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    return (srgb * 255).astype(np.float32)


def _to_srgb8(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) linear -> (H, W, 3) uint8 sRGB with film grain."""
    _, h, w = pixels.shape
    codes = _srgb_table()[np.clip(pixels * 4095 + 0.5, 0, 4095).astype(np.int32)]
    # Triangular noise from two random bytes: grain-like, and several times cheaper than normals.
    pair = rng.integers(0, 256, (2, *codes.shape), dtype=np.uint8)
    scale = max(GRAIN * math.sqrt(w * h / (320 * 240)), GRAIN_MIN) / math.sqrt(2 * (256**2 - 1) / 12)
    codes += (pair[0].astype(np.float32) - pair[1]) * np.float32(scale)
    return np.ascontiguousarray(np.clip(codes + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------------
# Files


def write_png(path: Path, image: np.ndarray) -> None:
    """Fixed encoder options and no metadata: the same pixels always give the same bytes.

    zlib level 1: grained frames barely compress, and level 6 took 7x longer (more than rendering) for
    files only 15% smaller.
    """
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_spec(out: Path) -> None:
    for name in SPEC_FILES:
        shutil.copyfile(SPEC_DIR / name, out / name)


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 24 i-CLEVR classes in objects.json order; each parses into COLORS x SHAPES."""
    names = load_vocab(SPEC_DIR / "objects.json")
    for name in names:
        parse_label(name)
    return names


def training_scene(seed: int, scene_no: int, *, world: str = "iclevr") -> Scene:
    """Training scene `scene_no` of a set drawn with `seed`: three distinct classes, then placement."""
    names = class_names()
    rng = scene_rng(seed, scene_no)
    labels = [names[i] for i in rng.choice(len(names), size=3, replace=False)]
    return sample_scene(rng, labels, world=world)


def _training_chunk(task) -> tuple[int, dict[str, list[str]]]:
    """Render training scenes [start, stop) into out/images (their descriptions into out/scenes);
    returns (scene count, file -> labels)."""
    out, seed, start, stop, size, world = task
    index: dict[str, list[str]] = {}
    for scene_no in range(start, stop):
        scene = training_scene(seed, scene_no, world=world)
        save_scene(Path(out) / "scenes" / f"CLEVR_train_{scene_no:06d}.json", scene)
        for k, image in enumerate(render_scene(scene, size=size, counts=(1, 2, 3))):
            name = f"CLEVR_train_{scene_no:06d}_{k}.png"
            write_png(Path(out) / "images" / name, image)
            index[name] = scene.labels[: k + 1]
    return stop - start, index


def _oracle_chunk(task) -> tuple[int, dict[str, list[str]]]:
    """Render oracle jobs [(entry, draw, labels, file name)] into out/images and out/scenes."""
    out, seed, jobs, size, world = task
    index: dict[str, list[str]] = {}
    for entry, draw, labels, name in jobs:
        scene = sample_scene(scene_rng(seed, entry, draw), labels, world=world)
        save_scene(Path(out) / "scenes" / name.replace(".png", ".json"), scene)
        write_png(Path(out) / "images" / name, render_scene(scene, size=size)[0])
        index[name] = list(labels)
    return len(jobs), index


def _files_chunk(task) -> tuple[int, dict[str, list[str]]]:
    """Render saved scene descriptions [(json path, image stem)] in the training layout."""
    out, jobs, size = task
    index: dict[str, list[str]] = {}
    for path, stem in jobs:
        scene = load_scene(path)
        counts = range(1, len(scene.objects) + 1)
        for k, image in enumerate(render_scene(scene, size=size, counts=counts)):
            name = f"{stem}_{k}.png"
            write_png(Path(out) / "images" / name, image)
            index[name] = scene.labels[: k + 1]
    return len(jobs), index


def _pool_context():
    """Workers fork from a clean server process that imported this module once. Not plain fork:
    callers may hold threads (torch, Ray) that fork copies in a bad state. Not spawn where avoidable:
    every spawned worker would import trainers.data (and torch with it) again, seconds each."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _run(fn, tasks: list, *, total: int, workers: int, progress: bool, desc: str) -> dict[str, list[str]]:
    """Run chunk tasks in-process (workers=1) or on a spawn pool, merging their file -> labels maps."""
    workers = min(workers, len(tasks))
    index: dict[str, list[str]] = {}
    with tqdm(total=total, desc=desc, unit="scene", file=sys.stderr, disable=not progress) as bar:
        if workers <= 1:
            results: Iterable = map(fn, tasks)
            for n, part in results:
                index.update(part)
                bar.update(n)
        else:
            with _pool_context().Pool(workers) as pool:
                for n, part in pool.imap_unordered(fn, tasks):
                    index.update(part)
                    bar.update(n)
    return index


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) ranges: ~8 per worker for load balance, at most 50 scenes each for progress."""
    step = max(1, min(50, math.ceil(n / (8 * workers))))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _count(name: str, value: object, *, minimum: int) -> int:
    """An int argument checked before any file is written."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _prepare(out: str | Path, *, scenes: bool = True) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if scenes:
        (out / "scenes").mkdir(exist_ok=True)
    copy_spec(out)
    return out


def _world(name: str) -> str:
    if name not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {name!r}")
    return name


def render_training_set(
    out: str | Path,
    *,
    scenes: int,
    seed: int,
    size: int | tuple[int, int] = (320, 240),
    workers: int | None = None,
    progress: bool = True,
    world: str = "iclevr",
) -> Path:
    """Render `scenes` scenes of 3 objects as 3 images each (1, 2, 3 objects) in the i-CLEVR layout.

    Scene i's three classes are distinct and drawn from SeedSequence([seed, i]), as is everything else
    about it; its description is saved as scenes/CLEVR_train_NNNNNN.json. Files of the same names in
    `out` are overwritten; other files are left alone.
    """
    scenes, seed = _count("scenes", scenes, minimum=1), _count("seed", seed, minimum=0)
    workers = _count("workers", (os.cpu_count() or 1) if workers is None else workers, minimum=1)
    wh, world = parse_size(size), _world(world)
    out = _prepare(out)
    tasks = [(str(out), seed, a, b, wh, world) for a, b in _chunks(scenes, workers)]
    index = _run(_training_chunk, tasks, total=scenes, workers=workers, progress=progress, desc="render")
    write_json(out / "train.json", index)
    return out


def _read_label_sets(label_file: Path) -> list[list[str]]:
    """A JSON list of label lists, each checked: known names, no repeats, 1..MAX_OBJECTS objects."""
    raw = read_json(label_file)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{label_file}: expected a non-empty list of label lists")
    vocab = class_names()
    for i, entry in enumerate(raw):
        encode_labels(entry, vocab, where=f"{label_file}: entry {i}")
        if len(entry) > MAX_OBJECTS:
            raise DataError(
                f"{label_file}: entry {i} has {len(entry)} labels, at most {MAX_OBJECTS} can be placed"
            )
    return raw


def render_label_sets(
    label_file: str | Path,
    out: str | Path,
    *,
    seed: int,
    size: int | tuple[int, int] = (320, 240),
    draws: int = 1,
    workers: int | None = None,
    progress: bool = True,
    world: str = "iclevr",
) -> Path:
    """Oracle renders: `draws` scenes per label set of label_file, holding exactly its objects.

    Files are images/oracle_NNNN.png (NNNN the entry's index), or oracle_NNNN_D.png when draws > 1,
    with their descriptions in scenes/ under the same stem; labels.json maps each image to its label
    list as written in label_file.
    """
    draws, seed = _count("draws", draws, minimum=1), _count("seed", seed, minimum=0)
    workers = _count("workers", (os.cpu_count() or 1) if workers is None else workers, minimum=1)
    wh, world = parse_size(size), _world(world)
    label_sets = _read_label_sets(Path(label_file))
    out = _prepare(out)
    jobs = [
        (i, d, labels, f"oracle_{i:04d}.png" if draws == 1 else f"oracle_{i:04d}_{d}.png")
        for i, labels in enumerate(label_sets)
        for d in range(draws)
    ]
    tasks = [(str(out), seed, jobs[a:b], wh, world) for a, b in _chunks(len(jobs), workers)]
    index = _run(_oracle_chunk, tasks, total=len(jobs), workers=workers, progress=progress, desc="oracle")
    write_json(out / "labels.json", index)
    return out


def render_scene_files(
    scene_files: Sequence[str | Path],
    out: str | Path,
    *,
    size: int | tuple[int, int] = (320, 240),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Render saved scene descriptions with the fast engine in the training layout: scene file
    NAME.json gives images/NAME_K.png showing its first K+1 objects, and train.json their labels.

    Every description is read and checked before anything is written (a bad one is a DataError).
    """
    workers = _count("workers", (os.cpu_count() or 1) if workers is None else workers, minimum=1)
    wh = parse_size(size)
    paths = [Path(p) for p in scene_files]
    if not paths:
        raise DataError("no scene files to render")
    for p in paths:
        load_scene(p)
    out = _prepare(out, scenes=False)
    jobs = [(str(p), p.stem) for p in paths]
    tasks = [(str(out), jobs[a:b], wh) for a, b in _chunks(len(jobs), workers)]
    index = _run(_files_chunk, tasks, total=len(jobs), workers=workers, progress=progress, desc="render")
    write_json(out / "train.json", index)
    return out
