"""Synthetic i-CLEVR: CLEVR-like scenes ray cast in numpy and written in the i-CLEVR layout.

The real i-CLEVR images cannot be downloaded here, so we render our own from CLEVR's scene recipe:
CLEVR's camera (translated by a random jitter, never re-aimed), its palette, sizes and two materials,
objects resting on a gray floor, rotated about the vertical, never interpenetrating and each one truly
visible. A scene is ray cast analytically on a supersampled pixel grid (spheres, capped cylinders,
bevel-shaded boxes), lit by a jittered area key light with cast shadows plus sky and fill light, shaded
Lambert + Blinn-Phong in linear light and written as sRGB, as Blender does for CLEVR.

The frame is always CLEVR's 4:3 field of view whatever the pixel size asked for: a 64x64 render is the
320x240 view squashed, exactly what i-CLEVR's loaders make of the real images (a full-frame resize).

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
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from trainers.data.errors import DataError
from trainers.data.labels import encode_labels, load_vocab, read_json

SPEC_DIR = Path(__file__).parent / "spec"
SPEC_FILES = ("objects.json", "test.json", "new_test.json")

# CLEVR's properties.json palette (0-255). Blender reads these as linear albedo and the frame is
# encoded to sRGB afterwards, which is why real CLEVR colours look lighter than the raw numbers.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SHAPES = ("cube", "sphere", "cylinder")
# CLEVR's sizes: the radius of spheres and cylinders (cylinders are 2r tall). CLEVR shrinks cubes by
# sqrt(2) so that their corners reach r, which makes r the horizontal bounding radius of every shape.
SIZES = {"large": 0.7, "small": 0.35}
MATERIALS = ("rubber", "metal")

# CLEVR's base camera (base_scene.blend): 35 mm lens on a 32 mm sensor, aimed at the origin. Each scene
# moves it by up to 0.5 per axis (CLEVR's --camera_jitter) without re-aiming, like CLEVR.
CAMERA_POSITION = (7.358891487121582, -6.925790786743164, 4.958309173583984)
CAMERA_JITTER = 0.5
TAN_HALF_FOV_X = 16.0 / 35.0
ASPECT = 240 / 320  # the frame's height / width; every render covers this view
# Object centres are drawn in CLEVR's [-3, 3]^2; bounding circles keep this gap (CLEVR's min_dist).
PLACEMENT_RANGE = 3.0
MIN_GAP = 0.25
# Visibility: CLEVR's 200 pixels at 320x240 (scaled with the pixel count) and, on top, half of the
# pixels the object would cover alone, so no label hides behind another object.
MIN_PIXELS_AT_320x240 = 200
MIN_VISIBLE_FRACTION = 0.5
POSITION_TRIES = 50  # per object before the whole scene is redrawn
SCENE_TRIES = 200  # a scene that fails this often cannot be placed at all (too many objects)
MAX_OBJECTS = 6  # label sets larger than this crowd CLEVR's 6x6 floor past reliable placement
MIN_SIZE = 16  # below this, the visibility threshold rounds to a single pixel and guarantees nothing

# Key light: from the front left of the view, so shadows fall to the back right as in CLEVR. Its
# direction is jittered per scene (CLEVR jitters its light positions) and it is an area light of this
# angular radius, which gives shadows a penumbra that widens away from the contact point.
KEY_AZIMUTH_DEG = -100.0
KEY_ELEVATION_DEG = 52.0
KEY_JITTER_DEG = 8.0
KEY_ANGULAR_RADIUS = 0.15
# Light levels (linear). The floor's shadow/lit ratio (~0.45) and the sky's share on object tops are
# tuned by eye against CLEVR frames.
KEY_INTENSITY = 0.45
FILL_INTENSITY = 0.08
SKY_INTENSITY = 0.25
GROUND_ALBEDO = 0.42
GROUND_FALLOFF = 14.0  # distance from the origin at which the floor's light has fallen to half
RUBBER_SPECULAR = (0.06, 12.0)  # (strength, Blinn-Phong exponent): a dull sheen
METAL_SPECULAR = (1.6, 90.0)  # a sharp white highlight
METAL_DIFFUSE = 0.15  # metal keeps little diffuse colour; its look comes from reflections
METAL_GLOSS = (0.45, 4.0)  # (strength, exponent): the key light's broad, metal-coloured glow
# What metal mirrors besides the sky and floor: CLEVR's fill and back area lights, as soft lobes.
METAL_FLOOR = 0.14  # the floor as metal mirrors it: darker than seen directly, for CLEVR's contrast
FILL_REFLECTION = 0.5
BACK_REFLECTION = 0.7
ENV_LOBE_POWER = 6.0
CUBE_BEVEL = 0.12  # CLEVR's cube is SmoothCube_v2; bending normals this close to an edge fakes it
# Floor ambient occlusion: each shape's stand-in sphere radius, in half heights, and how far (in
# bounding radii) its effect is computed before it falls below ~2%.
AO_SPHERE = {"sphere": 1.0, "cylinder": 1.25, "cube": 1.3}
AO_REACH = 3.5
# Film grain (sRGB code values at 320x240): Blender's path tracer leaves noise that also hides 8-bit
# banding on the smooth floor. Smaller renders stand for averaged big ones, so it shrinks with them.
GRAIN = 1.5
EPS = 1e-4


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    material: str
    x: float
    y: float
    angle: float  # radians about the vertical axis

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        """Horizontal bounding radius (see SIZES)."""
        return SIZES[self.size]

    @property
    def half_height(self) -> float:
        return self.radius / math.sqrt(2) if self.shape == "cube" else self.radius

    def corners(self) -> np.ndarray:
        """(8, 3) corners of a box holding the object: the cube itself, else its axis-aligned box."""
        h = self.half_height
        half = h if self.shape == "cube" else self.radius
        c, s = math.cos(self.angle), math.sin(self.angle)
        if self.shape != "cube":
            c, s = 1.0, 0.0
        out = []
        for lx in (-half, half):
            for ly in (-half, half):
                for z in (0.0, 2 * h):
                    out.append((self.x + c * lx - s * ly, self.y + s * lx + c * ly, z))
        return np.array(out)


@dataclass(frozen=True)
class Scene:
    camera: tuple[float, float, float]  # position; the orientation is CLEVR's, fixed
    light: tuple[float, float, float]  # unit vector towards the key light's centre
    objects: tuple[SceneObject, ...]
    noise: int = 0  # seed of the render's sampling pattern and film grain

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


_FORWARD = _unit([-c for c in CAMERA_POSITION])
_RIGHT = _unit(np.cross(_FORWARD, [0.0, 0.0, 1.0]))
_UP = np.cross(_RIGHT, _FORWARD)
# The fill light comes from the camera's right, opposite the key, and casts no shadow. Python floats,
# since numpy scalars would promote the float32 pixel arrays to float64.
_FILL = tuple(float(c) for c in _unit(_RIGHT * 0.8 - _FORWARD * 0.5 + np.array([0.0, 0.0, 0.6])))
# The back light sits behind the objects as seen from the camera, high up; only metal shows it.
_BACK = tuple(float(c) for c in _unit(_FORWARD * np.array([1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 0.9])))


# ---------------------------------------------------------------------------------------------------
# Sizes and the pixel grid


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An int (square) or (width, height) -> (width, height)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        width = height = int(size)
    elif (
        isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size)
    ):
        width, height = (int(v) for v in size)
    else:
        raise ValueError(f"size must be an int or (width, height), got {size!r}")
    if min(width, height) < MIN_SIZE:
        raise ValueError(f"size {width}x{height} is below the minimum of {MIN_SIZE} pixels per side")
    return width, height


def supersampling(width: int, height: int) -> int:
    """Samples per pixel side. Small renders stand in for big frames shrunk to 64x64, which average
    ~20 source pixels each, so they need more samples than a full-size frame for the same smoothness."""
    return 4 if max(width, height) <= 128 else 3


def min_pixels(width: int, height: int) -> int:
    """The smallest visible pixel count an object may have in a width x height render."""
    return max(2, math.ceil(MIN_PIXELS_AT_320x240 * width * height / (320 * 240)))


@lru_cache(maxsize=8)
def _ray_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ray directions through the pixel centres of a width x height grid: three (H, W) float32."""
    u = ((np.arange(width) + 0.5) / width * 2 - 1) * TAN_HALF_FOV_X
    v = (1 - (np.arange(height) + 0.5) / height * 2) * TAN_HALF_FOV_X * ASPECT
    d = _FORWARD + u[None, :, None] * _RIGHT + v[:, None, None] * _UP  # (H, W, 3)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    out = tuple(np.ascontiguousarray(d[..., i], dtype=np.float32) for i in range(3))
    for a in out:
        a.flags.writeable = False  # shared by every scene through the cache
    return out


def _project(points: np.ndarray, camera: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 3) world points -> (N, 2) (column, row) on a width x height grid; edges at 0 and width."""
    v = points - camera
    depth = v @ _FORWARD
    col = ((v @ _RIGHT) / (depth * TAN_HALF_FOV_X) + 1) / 2 * width
    row = (1 - (v @ _UP) / (depth * TAN_HALF_FOV_X * ASPECT)) / 2 * height
    return np.stack([col, row], axis=1)


def _rect(points: np.ndarray, width: int, height: int) -> tuple[slice, slice] | None:
    """Pixel rectangle (rows, cols) holding projected points, padded by one pixel; None if off-grid."""
    c0, r0 = np.floor(points.min(axis=0)).astype(int) - 1
    c1, r1 = np.ceil(points.max(axis=0)).astype(int) + 1
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _meet(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    """Whether two (rows, cols) rectangles overlap."""
    return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------------
# Ray-object intersection: t along unit rays o + t d, inf on a miss. Origins are scalars (camera) or
# arrays (shadow rays from surface points); all arrays are float32 of one shape.


def _hit_sphere(obj: SceneObject, o, d) -> np.ndarray:
    r = obj.radius
    px, py, pz = o[0] - obj.x, o[1] - obj.y, o[2] - r
    b = px * d[0] + py * d[1] + pz * d[2]
    disc = b * b - (px * px + py * py + pz * pz - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc > 0) & (t > EPS), t, np.inf)


def _hit_cylinder(obj: SceneObject, o, d) -> np.ndarray:
    r, top = obj.radius, 2 * obj.radius
    px, py = o[0] - obj.x, o[1] - obj.y
    a = d[0] * d[0] + d[1] * d[1]
    b = px * d[0] + py * d[1]
    disc = b * b - a * (px * px + py * py - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        z = o[2] + t_side * d[2]
        side = (disc > 0) & (t_side > EPS) & (z >= 0) & (z <= top)
        # Only the top cap can be entered: cameras look down and shadow rays start at or above z = 0.
        t_cap = (top - o[2]) / d[2]
        cx, cy = px + t_cap * d[0], py + t_cap * d[1]
        cap = (t_cap > EPS) & (cx * cx + cy * cy <= r * r)
    return np.where(side, t_side, np.where(cap, t_cap, np.inf))


def _to_box(obj: SceneObject, x, y):
    """World offsets from the box's axis -> its own frame (rotation by -angle)."""
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    return c * x + s * y, c * y - s * x


def _hit_cube(obj: SceneObject, o, d) -> np.ndarray:
    h = obj.half_height
    lx, ly = _to_box(obj, o[0] - obj.x, o[1] - obj.y)
    dx, dy = _to_box(obj, d[0], d[1])
    near, far = None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        for p, q in ((lx, dx), (ly, dy), (o[2] - h, d[2])):
            inv = 1 / q
            t1, t2 = (-h - p) * inv, (h - p) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            near = lo if near is None else np.maximum(near, lo)
            far = hi if far is None else np.minimum(far, hi)
    return np.where((near <= far) & (near > EPS), near, np.inf)


def _normal_sphere(obj: SceneObject, p):
    r = obj.radius
    return (p[0] - obj.x) / r, (p[1] - obj.y) / r, (p[2] - r) / r


def _normal_cylinder(obj: SceneObject, p):
    on_cap = p[2] >= 2 * obj.radius - 1e-3
    nx, ny = (p[0] - obj.x) / obj.radius, (p[1] - obj.y) / obj.radius
    return np.where(on_cap, 0, nx), np.where(on_cap, 0, ny), on_cap.astype(np.float32)


def _normal_cube(obj: SceneObject, p):
    """The face normal, bent towards the neighbouring faces within CUBE_BEVEL of an edge."""
    h = obj.half_height
    lx, ly = _to_box(obj, p[0] - obj.x, p[1] - obj.y)
    local = [lx / h, ly / h, (p[2] - h) / h]
    # |coordinate| - (1 - bevel) is ~bevel on the hit face and positive on others only near an edge.
    bent = [np.sign(v) * np.maximum(np.abs(v) - (1 - CUBE_BEVEL), 0) for v in local]
    norm = np.sqrt(bent[0] ** 2 + bent[1] ** 2 + bent[2] ** 2) + 1e-12
    nx, ny, nz = (b / norm for b in bent)
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    return c * nx - s * ny, s * nx + c * ny, nz


HIT: dict[str, Callable] = {"cube": _hit_cube, "sphere": _hit_sphere, "cylinder": _hit_cylinder}
NORMAL: dict[str, Callable] = {"cube": _normal_cube, "sphere": _normal_sphere, "cylinder": _normal_cylinder}


# ---------------------------------------------------------------------------------------------------
# Object-id buffers (what placement checks and what tests read)


@dataclass
class _Hits:
    """One object's camera-ray hits inside its screen rectangle."""

    rect: tuple[slice, slice]
    t: np.ndarray  # (h, w), inf where the ray misses


def _camera_hits(obj: SceneObject, camera: np.ndarray, width: int, height: int) -> _Hits | None:
    rect = _rect(_project(obj.corners(), camera, width, height), width, height)
    if rect is None:
        return None
    d = tuple(a[rect] for a in _ray_grid(width, height))
    return _Hits(rect, HIT[obj.shape](obj, tuple(float(c) for c in camera), d).astype(np.float32))


def _nearest(hits: Sequence[_Hits | None], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, depth): (H, W) int8 index of the nearest object (-1 for the floor) and its distance."""
    ids = np.full((height, width), -1, dtype=np.int8)
    depth = np.full((height, width), np.inf, dtype=np.float32)
    for j, h in enumerate(hits):
        if h is None:
            continue
        closer = h.t < depth[h.rect]
        np.copyto(depth[h.rect], h.t, where=closer)
        np.copyto(ids[h.rect], np.int8(j), where=closer)
    return ids, depth


def object_id_buffer(scene: Scene, *, size: int | Sequence[int]) -> np.ndarray:
    """(H, W) int8: index in scene.objects of the object seen at each pixel centre, -1 for the floor."""
    width, height = parse_size(size)
    camera = np.array(scene.camera)
    hits = [_camera_hits(o, camera, width, height) for o in scene.objects]
    return _nearest(hits, width, height)[0]


# ---------------------------------------------------------------------------------------------------
# Scene sampling


def scene_rng(seed: int, *index: int) -> np.random.Generator:
    """The generator of one scene: independent of how scenes are split between workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, *index]))


def parse_label(label: str) -> tuple[str, str]:
    """ "red cube" -> ("red", "cube"). Unknown names raise KeyError; callers know the file."""
    color, _, shape = label.partition(" ")
    if color not in COLORS or shape not in SHAPES:
        raise KeyError(label)
    return color, shape


def _sample_light(rng: np.random.Generator) -> tuple[float, float, float]:
    az = math.radians(KEY_AZIMUTH_DEG + rng.uniform(-KEY_JITTER_DEG, KEY_JITTER_DEG))
    el = math.radians(KEY_ELEVATION_DEG + rng.uniform(-KEY_JITTER_DEG, KEY_JITTER_DEG) / 2)
    return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))


def _sample_object(rng: np.random.Generator, label: str) -> SceneObject:
    color, shape = parse_label(label)
    x, y = (float(v) for v in rng.uniform(-PLACEMENT_RANGE, PLACEMENT_RANGE, 2))
    return SceneObject(
        shape=shape,
        color=color,
        size=("large", "small")[int(rng.integers(2))],
        material=MATERIALS[int(rng.integers(2))],
        x=x,
        y=y,
        angle=float(rng.uniform(0, 2 * math.pi)),
    )


def _in_view(obj: SceneObject, camera: np.ndarray, width: int, height: int) -> bool:
    """The whole object inside the frame (all corners of its box project inside)."""
    p = _project(obj.corners(), camera, width, height)
    return bool(
        (p[:, 0] >= 0).all()
        and (p[:, 0] <= width).all()
        and (p[:, 1] >= 0).all()
        and (p[:, 1] <= height).all()
    )


def _apart(obj: SceneObject, placed: Sequence[SceneObject]) -> bool:
    return all(math.hypot(obj.x - o.x, obj.y - o.y) >= obj.radius + o.radius + MIN_GAP for o in placed)


def _all_visible(hits: Sequence[_Hits], width: int, height: int) -> bool:
    """Every object shows at least min_pixels and MIN_VISIBLE_FRACTION of its unoccluded pixels."""
    ids = _nearest(hits, width, height)[0]
    floor = min_pixels(width, height)
    for j, h in enumerate(hits):
        alone = int(np.isfinite(h.t).sum())
        seen = int((ids[h.rect] == j).sum())
        if seen < max(floor, MIN_VISIBLE_FRACTION * alone):
            return False
    return True


def _place(rng: np.random.Generator, labels: Sequence[str], camera: np.ndarray, width: int, height: int):
    """Objects for `labels` in order, each checked against those before it; None when one cannot fit."""
    placed: list[SceneObject] = []
    hits: list[_Hits] = []
    for label in labels:
        for _ in range(POSITION_TRIES):
            obj = _sample_object(rng, label)
            if not (_apart(obj, placed) and _in_view(obj, camera, width, height)):
                continue
            h = _camera_hits(obj, camera, width, height)
            if h is not None and _all_visible([*hits, h], width, height):
                placed.append(obj)
                hits.append(h)
                break
        else:
            return None
    return tuple(placed)


def sample_scene(rng: np.random.Generator, labels: Sequence[str], *, size: int | Sequence[int]) -> Scene:
    """A scene holding exactly `labels`, placed in that order; every prefix is itself a valid scene.

    Visibility is checked on the size's pixel grid: adding objects only hides more, so a scene whose
    objects are all visible keeps them visible in every prefix (the _0 and _1 images).
    """
    width, height = parse_size(size)
    for _ in range(SCENE_TRIES):
        camera = np.array(CAMERA_POSITION) + rng.uniform(-CAMERA_JITTER, CAMERA_JITTER, 3)
        light = _sample_light(rng)
        objects = _place(rng, labels, camera, width, height)
        if objects is not None:
            noise = int(rng.integers(2**63))
            return Scene(camera=tuple(float(c) for c in camera), light=light, objects=objects, noise=noise)
    raise RuntimeError(f"could not place {list(labels)} in {SCENE_TRIES} scenes at {width}x{height}")


# ---------------------------------------------------------------------------------------------------
# Shading


@lru_cache(maxsize=4)
def _disc_points(n: int) -> np.ndarray:
    """(n, 2) evenly spread points on the unit disc (Vogel's spiral)."""
    k = np.arange(n)
    radius = np.sqrt((k + 0.5) / n)
    angle = k * math.pi * (3 - math.sqrt(5))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _light_basis(light: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, e1, e2): the key light's direction and two axes spanning its disc, one radius long."""
    centre = _unit(light)
    e1 = _unit(np.cross(centre, [0.0, 0.0, 1.0]))
    return centre, e1 * KEY_ANGULAR_RADIUS, np.cross(e1, centre) * KEY_ANGULAR_RADIUS


def _light_disc(light: Sequence[float], offsets: np.ndarray) -> np.ndarray:
    """(..., 3) unit directions to points of the key light's disc at (..., 2) offsets in radii."""
    centre, e1, e2 = _light_basis(light)
    dirs = centre + offsets[..., :1] * e1 + offsets[..., 1:] * e2
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def _light_rays(light: Sequence[float], width: int, height: int, ss: int, rng: np.random.Generator):
    """Per-sample unit directions towards the key light's disc: three (height*ss, width*ss) float32.

    The ss*ss samples of a pixel look at ss*ss spread points of the disc, so shadow edges average into
    a penumbra; each pixel turns that pattern by its own random angle, which trades visible steps in
    the penumbra for fine noise, as a path tracer's area light does.
    """
    centre, e1, e2 = _light_basis(light)
    base = _disc_points(ss * ss).astype(np.float32).reshape(1, ss, 1, ss, 2)
    angle = rng.uniform(0, 2 * math.pi, (height, 1, width, 1)).astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * base[..., 0] - s * base[..., 1]).reshape(height * ss, width * ss)
    v = (s * base[..., 0] + c * base[..., 1]).reshape(height * ss, width * ss)
    dirs = [float(centre[i]) + float(e1[i]) * u + float(e2[i]) * v for i in range(3)]
    inv = 1 / np.sqrt(dirs[0] * dirs[0] + dirs[1] * dirs[1] + dirs[2] * dirs[2])
    return tuple(d * inv for d in dirs)


def _floor_light(px, py) -> np.ndarray:
    """Relative light reaching the floor: CLEVR's lights are near, so the floor darkens far away."""
    return 1 / (1 + (px * px + py * py) * (1 / GROUND_FALLOFF**2))


def _floor_occlusion(obj: SceneObject, fx, fy) -> np.ndarray:
    """Share of the sky an object hides from floor points: the form factor of a sphere standing in
    for it (exact for spheres), so the floor darkens softly where objects meet it."""
    a, hc = AO_SPHERE[obj.shape] * obj.half_height, obj.half_height
    dx, dy = fx - obj.x, fy - obj.y
    q = dx * dx + dy * dy + hc * hc
    return np.minimum(a * a * hc / (q * np.sqrt(q)), 0.95)


def _floor_ao_rect(obj: SceneObject, camera: np.ndarray, width: int, height: int):
    """Where _floor_occlusion matters (above ~2%): a floor square of AO_REACH radii round the object."""
    reach = AO_REACH * obj.radius
    square = np.array([(obj.x + sx * reach, obj.y + sy * reach, 0.0) for sx in (-1, 1) for sy in (-1, 1)])
    return _rect(_project(square, camera, width, height), width, height)


def _environment(rx, ry, rz) -> np.ndarray:
    """Linear radiance a mirror sees along unit direction r, key light excluded (it casts shadows):
    the lit floor below a dark, blurred horizon, a sky brightening upwards, and CLEVR's fill and back
    lights as soft bright patches, which is what gives metal faces their contrast."""
    sky = 0.03 + 1.1 * np.clip(rz, 0, 1) ** 0.6
    # Steeply down, a mirror sees the floor right under the object, darkened by its contact shadow.
    floor = METAL_FLOOR * (1 - 0.6 * np.clip(-rz, 0, 1) ** 2)
    w = np.clip(rz * 5 + 0.5, 0, 1)
    glow = 0.0
    for (x, y, z), strength in ((_FILL, FILL_REFLECTION), (_BACK, BACK_REFLECTION)):
        glow = glow + strength * np.maximum(rx * x + ry * y + rz * z, 0) ** ENV_LOBE_POWER
    return floor * (1 - w) + sky * w + glow


def _reflect(d, n):
    d_dot_n = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
    return tuple(d[i] - 2 * d_dot_n * n[i] for i in range(3)), d_dot_n


def _shade_rubber(albedo: np.ndarray, n, d, light):
    """Matte: diffuse colour and a faint, broad sheen."""
    n_dot_l, ambient = _diffuse(n, light)
    strength, power = RUBBER_SPECULAR
    amb = albedo * ambient
    key = albedo * (KEY_INTENSITY * n_dot_l) + strength * KEY_INTENSITY * _blinn(n, d, light) ** power
    return amb, key


def _shade_metal(albedo: np.ndarray, n, d, light):
    """Shiny metal: little diffuse; a mirror of the surroundings tinted by the metal's colour, a
    blurred reflection of the key light and a sharp white highlight."""
    n_dot_l, ambient = _diffuse(n, light)
    r, d_dot_n = _reflect(d, n)
    fresnel = 0.6 + 0.4 * (1 + d_dot_n) ** 5  # 1 + d.n = 1 - n.v
    amb = albedo * (METAL_DIFFUSE * ambient + _environment(*r) * fresnel)
    n_dot_h = _blinn(n, d, light)
    glossy = METAL_GLOSS[0] * n_dot_h ** METAL_GLOSS[1]
    strength, power = METAL_SPECULAR
    sharp = strength * n_dot_h**power
    key = albedo * (KEY_INTENSITY * (METAL_DIFFUSE * n_dot_l + glossy)) + KEY_INTENSITY * sharp
    return amb, key


def _diffuse(n, light):
    """(n.l clamped, ambient irradiance from the sky above and the unshadowed fill light)."""
    n_dot_l = np.maximum(n[0] * light[0] + n[1] * light[1] + n[2] * light[2], 0)
    n_dot_f = np.maximum(n[0] * _FILL[0] + n[1] * _FILL[1] + n[2] * _FILL[2], 0)
    return n_dot_l, SKY_INTENSITY * (0.55 + 0.45 * n[2]) + FILL_INTENSITY * n_dot_f


def _blinn(n, d, light):
    """n.h for the half vector between the key light and the viewer (-d); 0 where the light is behind."""
    hx, hy, hz = light[0] - d[0], light[1] - d[1], light[2] - d[2]
    n_dot_h = (n[0] * hx + n[1] * hy + n[2] * hz) / np.sqrt(hx * hx + hy * hy + hz * hz)
    facing = (n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) > 0
    return np.where(facing, np.maximum(n_dot_h, 0), 0)


MATERIAL_SHADERS: dict[str, Callable] = {"rubber": _shade_rubber, "metal": _shade_metal}


def _shade_object(obj: SceneObject, p, d, light: Sequence[float]):
    """(ambient, key) radiance, each (3, n) over n hit points: the key part is what a shadow removes."""
    albedo = np.array(COLORS[obj.color], dtype=np.float32)[:, None] / 255
    amb, key = MATERIAL_SHADERS[obj.material](albedo, NORMAL[obj.shape](obj, p), d, light)
    return np.broadcast_to(amb, (3, d[0].size)), np.broadcast_to(key, (3, d[0].size))


# ---------------------------------------------------------------------------------------------------
# Rendering
#
# Only one window of the frame needs samples: the box round every object, its shadow and its contact
# occlusion (the canvas, on the supersampled grid). The floor outside it is smooth, so its value at a
# pixel's centre equals the mean of the pixel's samples to far under one code value, and it is shaded
# once per pixel. Rectangles below are canvas-local unless named otherwise.


@dataclass
class _Surface:
    """An object's hit points on the supersampled grid, with its unshadowed shading (hit pixels only)."""

    rect: tuple[slice, slice]
    t: np.ndarray  # (h, w)
    hit: np.ndarray  # (h, w) bool
    points: tuple[np.ndarray, np.ndarray, np.ndarray]  # (n,) each, the hit pixels in row-major order
    ambient: np.ndarray  # (3, n)
    key: np.ndarray  # (3, n)


def _surface(obj: SceneObject, camera: np.ndarray, light, width: int, height: int) -> _Surface | None:
    """The object on the full width x height grid (its rect in grid coordinates)."""
    hits = _camera_hits(obj, camera, width, height)
    if hits is None:
        return None
    hit = np.isfinite(hits.t)
    t = hits.t[hit]
    d = tuple(a[hits.rect][hit] for a in _ray_grid(width, height))
    p = tuple(float(c) + t * di for c, di in zip(camera, d, strict=True))
    ambient, key = _shade_object(obj, p, d, light)
    return _Surface(hits.rect, hits.t, hit, p, ambient, key)


def _shadow_rect(obj: SceneObject, camera: np.ndarray, light, width: int, height: int):
    """Grid rectangle holding every point the object can shade: the box swept to the floor along
    the key light's disc. Points it shades lie between the object and its floor shadow."""
    corners = obj.corners()
    pts = [corners]
    # The disc's centre and rim; slightly beyond the rim so rounding never clips a penumbra.
    rim = np.array([(0, 0), (1.05, 0), (-1.05, 0), (0, 1.05), (0, -1.05)])
    for ray in _light_disc(light, rim):
        pts.append(corners - corners[:, 2:] / ray[2] * ray)
    return _rect(_project(np.concatenate(pts), camera, width, height), width, height)


def _canvas(rects, ss: int, width: int, height: int) -> tuple[slice, slice] | None:
    """The union of grid rectangles, grown to whole pixels (multiples of ss)."""
    rects = [r for r in rects if r is not None]
    if not rects:
        return None
    r0, c0 = (min(r[i].start for r in rects) // ss * ss for i in (0, 1))
    r1, c1 = (-(-max(r[i].stop for r in rects) // ss) * ss for i in (0, 1))
    return slice(r0, min(r1, height)), slice(c0, min(c1, width))


def _shift(rect: tuple[slice, slice] | None, canvas: tuple[slice, slice]) -> tuple[slice, slice] | None:
    """A grid rectangle in canvas coordinates."""
    if rect is None:
        return None
    r, c = canvas[0].start, canvas[1].start
    return slice(rect[0].start - r, rect[0].stop - r), slice(rect[1].start - c, rect[1].stop - c)


def _occluded(obj: SceneObject, p, lrays) -> np.ndarray:
    """Bool: shadow rays from points p towards the key light's samples hit obj."""
    return np.isfinite(HIT[obj.shape](obj, p, lrays))


def _take(arrays, rect) -> tuple[np.ndarray, ...]:
    return tuple(a[rect] for a in arrays)


@dataclass
class _Floor:
    """The floor over the canvas: what every image of a scene starts from."""

    ambient: np.ndarray  # (h, w) sky light reaching the floor, before occlusion
    key: np.ndarray  # (h, w) key light reaching the floor where unshadowed
    occlusion: list  # per object: (rect, (h, w) sky share it hides) or None
    shadow: list  # per object: (rect, (h, w) bool shadowed) or None


def _floor(scene: Scene, rays, lrays, ao_rects, shadow_rects) -> _Floor:
    """The floor seen along camera rays (canvas arrays) and what each object does to it."""
    cx, cy, cz = scene.camera
    # Every camera ray meets the floor: CLEVR's camera looks down and the horizon is out of frame.
    t = -cz / rays[2]
    fx, fy = cx + t * rays[0], cy + t * rays[1]
    light = GROUND_ALBEDO * _floor_light(fx, fy)
    occlusion, shadow = [], []
    for obj, ao, sh in zip(scene.objects, ao_rects, shadow_rects, strict=True):
        occlusion.append(None if ao is None else (ao, _floor_occlusion(obj, fx[ao], fy[ao])))
        points = None if sh is None else (fx[sh], fy[sh], np.zeros_like(fx[sh]))
        shadow.append(None if sh is None else (sh, _occluded(obj, points, _take(lrays, sh))))
    return _Floor(light * SKY_INTENSITY, light * (KEY_INTENSITY * scene.light[2]), occlusion, shadow)


def _floor_pixels(scene: Scene, width: int, height: int) -> np.ndarray:
    """(3, H, W) floor radiance at pixel centres with no object present."""
    cx, cy, cz = scene.camera
    rays = _ray_grid(width, height)
    t = -cz / rays[2]
    light = GROUND_ALBEDO * _floor_light(cx + t * rays[0], cy + t * rays[1])
    gray = light * (SKY_INTENSITY + KEY_INTENSITY * scene.light[2])
    return np.broadcast_to(gray, (3, height, width)).copy()


def _floor_color(floor: _Floor, k: int) -> np.ndarray:
    """(3, h, w) linear floor radiance with the first k objects' shadows and occlusion."""
    sky = np.ones_like(floor.ambient)
    lit = np.ones(floor.ambient.shape, dtype=bool)
    for j in range(k):
        if floor.occlusion[j] is not None:
            rect, hidden = floor.occlusion[j]
            sky[rect] *= 1 - hidden
        if floor.shadow[j] is not None:
            rect, shadowed = floor.shadow[j]
            lit[rect] &= ~shadowed
    gray = floor.ambient * sky + floor.key * lit
    return np.broadcast_to(gray, (3, *gray.shape)).copy()


def _object_shadow(surf: _Surface | None, occluder: SceneObject, rect, lrays) -> np.ndarray | None:
    """Bool over surf's hit pixels: shadowed by occluder (None when it cannot reach any of them)."""
    if surf is None or rect is None or not _meet(surf.rect, rect):
        return None
    return _occluded(occluder, surf.points, tuple(a[surf.rect][surf.hit] for a in lrays))


def _paint(color: np.ndarray, ids: np.ndarray, s: int, surf: _Surface | None, shadows) -> None:
    """Write object s's shading into color where it is the nearest surface."""
    if surf is None:
        return
    lit = np.ones(surf.ambient.shape[1], dtype=bool)
    for sh in shadows:
        if sh is not None:
            lit &= ~sh
    shade = surf.ambient + surf.key * lit  # (3, n)
    mine = ids[surf.rect][surf.hit] == s  # the hit pixels where no nearer object covers s
    view = color[(slice(None), *surf.rect)]
    rows, cols = np.nonzero(surf.hit)
    view[:, rows[mine], cols[mine]] = shade[:, mine]


def _downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """(..., H*ss, W*ss) -> (..., H, W) box average. Strided sums: ~10x faster than reshape + mean."""
    cols = sum(a[..., j::ss] for j in range(ss))
    return sum(cols[..., i::ss, :] for i in range(ss)) * (1 / (ss * ss))


def render_scene(
    scene: Scene, *, size: int | Sequence[int], counts: Iterable[int] | None = None
) -> list[np.ndarray]:
    """uint8 (H, W, 3) images of the scene's first k objects for each k in counts (default: all).

    Geometry, shading and shadow tests are computed once per object and shared by every image: an
    object's hit points and the shadows cast on them do not depend on which later objects exist.
    """
    width, height = parse_size(size)
    ss = supersampling(width, height)
    gw, gh = width * ss, height * ss
    camera, n = np.array(scene.camera), len(scene.objects)
    rng = np.random.default_rng(scene.noise)
    grid_surfaces = [_surface(o, camera, scene.light, gw, gh) for o in scene.objects]
    grid_shadows = [_shadow_rect(o, camera, scene.light, gw, gh) for o in scene.objects]
    grid_ao = [_floor_ao_rect(o, camera, gw, gh) for o in scene.objects]
    rects = [s.rect for s in grid_surfaces if s is not None] + grid_shadows + grid_ao
    canvas = _canvas(rects, ss, gw, gh)
    background = _floor_pixels(scene, width, height)
    if canvas is None:
        return [_to_srgb8(background, rng) for _ in ([n] if counts is None else counts)]
    surfaces = [None if s is None else replace(s, rect=_shift(s.rect, canvas)) for s in grid_surfaces]
    shadow_rects = [_shift(r, canvas) for r in grid_shadows]
    ch, cw = canvas[0].stop - canvas[0].start, canvas[1].stop - canvas[1].start
    lrays = _light_rays(scene.light, cw // ss, ch // ss, ss, rng)
    floor = _floor(
        scene, _take(_ray_grid(gw, gh), canvas), lrays, [_shift(r, canvas) for r in grid_ao], shadow_rects
    )
    object_shadow = {
        (s, j): _object_shadow(surfaces[s], scene.objects[j], shadow_rects[j], lrays)
        for s in range(n)
        for j in range(n)
        if s != j
    }
    pixels = (
        slice(canvas[0].start // ss, canvas[0].stop // ss),
        slice(canvas[1].start // ss, canvas[1].stop // ss),
    )
    images = []
    for k in [n] if counts is None else counts:
        color = _floor_color(floor, k)
        ids, _ = _nearest(surfaces[:k], cw, ch)
        for s in range(k):
            _paint(color, ids, s, surfaces[s], [object_shadow[(s, j)] for j in range(k) if j != s])
        frame = background.copy()
        frame[(slice(None), *pixels)] = _downsample(color, ss)
        images.append(_to_srgb8(frame, rng))
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
    scale = GRAIN * math.sqrt(w * h / (320 * 240)) / math.sqrt(2 * (256**2 - 1) / 12)
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


def _training_chunk(task: tuple[str, int, int, int, tuple[int, int]]) -> tuple[int, dict[str, list[str]]]:
    """Render training scenes [start, stop) into out/images; returns (scene count, file -> labels)."""
    out, seed, start, stop, size = task
    names = class_names()
    index: dict[str, list[str]] = {}
    for scene_no in range(start, stop):
        rng = scene_rng(seed, scene_no)
        labels = [names[i] for i in rng.choice(len(names), size=3, replace=False)]
        scene = sample_scene(rng, labels, size=size)
        for k, image in enumerate(render_scene(scene, size=size, counts=(1, 2, 3))):
            name = f"CLEVR_train_{scene_no:06d}_{k}.png"
            write_png(Path(out) / "images" / name, image)
            index[name] = labels[: k + 1]
    return stop - start, index


def _oracle_chunk(task) -> tuple[int, dict[str, list[str]]]:
    """Render oracle jobs [(entry, draw, labels, file name)] into out/images."""
    out, seed, jobs, size = task
    index: dict[str, list[str]] = {}
    for entry, draw, labels, name in jobs:
        scene = sample_scene(scene_rng(seed, entry, draw), labels, size=size)
        write_png(Path(out) / "images" / name, render_scene(scene, size=size)[0])
        index[name] = list(labels)
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


def _prepare(out: str | Path) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    copy_spec(out)
    return out


def render_training_set(
    out: str | Path,
    *,
    scenes: int,
    seed: int,
    size: int | tuple[int, int] = (320, 240),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Render `scenes` scenes of 3 objects as 3 images each (1, 2, 3 objects) in the i-CLEVR layout.

    Scene i's three classes are distinct and drawn from SeedSequence([seed, i]), as is everything else
    about it. Files of the same names in `out` are overwritten; other files are left alone.
    """
    scenes, seed = _count("scenes", scenes, minimum=1), _count("seed", seed, minimum=0)
    workers = _count("workers", (os.cpu_count() or 1) if workers is None else workers, minimum=1)
    wh = parse_size(size)
    out = _prepare(out)
    tasks = [(str(out), seed, a, b, wh) for a, b in _chunks(scenes, workers)]
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
) -> Path:
    """Oracle renders: `draws` scenes per label set of label_file, holding exactly its objects.

    Files are images/oracle_NNNN.png (NNNN the entry's index), or oracle_NNNN_D.png when draws > 1;
    labels.json maps each to its label list as written in label_file.
    """
    draws, seed = _count("draws", draws, minimum=1), _count("seed", seed, minimum=0)
    workers = _count("workers", (os.cpu_count() or 1) if workers is None else workers, minimum=1)
    wh = parse_size(size)
    label_sets = _read_label_sets(Path(label_file))
    out = _prepare(out)
    jobs = [
        (i, d, labels, f"oracle_{i:04d}.png" if draws == 1 else f"oracle_{i:04d}_{d}.png")
        for i, labels in enumerate(label_sets)
        for d in range(draws)
    ]
    tasks = [(str(out), seed, jobs[a:b], wh) for a, b in _chunks(len(jobs), workers)]
    index = _run(_oracle_chunk, tasks, total=len(jobs), workers=workers, progress=progress, desc="oracle")
    write_json(out / "labels.json", index)
    return out
