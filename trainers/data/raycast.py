"""Ray casting CLEVR's shapes: the pixel grid of a camera, ray-object hits, normals and object-id buffers.

Rays are unit vectors o + t d; a hit function returns t, inf on a miss. Origins are scalars (the camera)
or arrays (shadow rays from surface points); all arrays are float32 of one shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trainers.data.scene import ASPECT, TAN_HALF_FOV_X, Camera, Scene, SceneObject

EPS = 1e-4
MIN_SIZE = 16  # below this, the visibility threshold rounds to a single pixel and guarantees nothing


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


Rect = tuple[slice, slice]


def camera_rays(cam: Camera, width: int, height: int, rect: Rect | None = None):
    """Unit ray directions through the pixel centres of a width x height grid (or its rect): three
    (h, w) float32. The frame is always the 4:3 view, whatever the grid's own aspect: a 64x64 render
    is the 320x240 view squashed, as i-CLEVR's loaders squash the real frames."""
    rows, cols = rect if rect is not None else (slice(0, height), slice(0, width))
    u = ((np.arange(cols.start, cols.stop) + 0.5) / width * 2 - 1) * TAN_HALF_FOV_X
    v = (1 - (np.arange(rows.start, rows.stop) + 0.5) / height * 2) * TAN_HALF_FOV_X * ASPECT
    d = cam.forward + u[None, :, None] * cam.right + v[:, None, None] * cam.up  # (h, w, 3)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return tuple(np.ascontiguousarray(d[..., i], dtype=np.float32) for i in range(3))


def project(points: np.ndarray, cam: Camera, width: int, height: int) -> np.ndarray:
    """(N, 3) world points -> (N, 2) (column, row) on a width x height grid; edges at 0 and width."""
    v = points - np.asarray(cam.position)
    depth = v @ cam.forward
    col = ((v @ cam.right) / (depth * TAN_HALF_FOV_X) + 1) / 2 * width
    row = (1 - (v @ cam.up) / (depth * TAN_HALF_FOV_X * ASPECT)) / 2 * height
    return np.stack([col, row], axis=1)


def bounding_rect(points: np.ndarray, width: int, height: int) -> Rect | None:
    """Pixel rectangle (rows, cols) holding projected points, padded by one pixel; None if off-grid."""
    c0, r0 = np.floor(points.min(axis=0)).astype(int) - 1
    c1, r1 = np.ceil(points.max(axis=0)).astype(int) + 1
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def meet(a: Rect, b: Rect) -> bool:
    """Whether two (rows, cols) rectangles overlap."""
    return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b, strict=True))


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
    """World offsets from the box's axis -> its own frame (rotation by -rotation)."""
    c, s = math.cos(obj.rotation), math.sin(obj.rotation)
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


CUBE_BEVEL = 0.12  # CLEVR's cube is SmoothCube_v2; bending normals this close to an edge fakes it


def _normal_cube(obj: SceneObject, p):
    """The face normal, bent towards the neighbouring faces within CUBE_BEVEL of an edge."""
    h = obj.half_height
    lx, ly = _to_box(obj, p[0] - obj.x, p[1] - obj.y)
    local = [lx / h, ly / h, (p[2] - h) / h]
    # |coordinate| - (1 - bevel) is ~bevel on the hit face and positive on others only near an edge.
    bent = [np.sign(v) * np.maximum(np.abs(v) - (1 - CUBE_BEVEL), 0) for v in local]
    norm = np.sqrt(bent[0] ** 2 + bent[1] ** 2 + bent[2] ** 2) + 1e-12
    nx, ny, nz = (b / norm for b in bent)
    c, s = math.cos(obj.rotation), math.sin(obj.rotation)
    return c * nx - s * ny, s * nx + c * ny, nz


HIT: dict[str, Callable] = {"cube": _hit_cube, "sphere": _hit_sphere, "cylinder": _hit_cylinder}
NORMAL: dict[str, Callable] = {"cube": _normal_cube, "sphere": _normal_sphere, "cylinder": _normal_cylinder}


@dataclass
class Hits:
    """One object's camera-ray hits inside its screen rectangle."""

    rect: Rect
    t: np.ndarray  # (h, w), inf where the ray misses


def camera_hits(obj: SceneObject, cam: Camera, width: int, height: int) -> Hits | None:
    rect = bounding_rect(project(obj.corners(), cam, width, height), width, height)
    if rect is None:
        return None
    d = camera_rays(cam, width, height, rect)
    return Hits(rect, HIT[obj.shape](obj, tuple(float(c) for c in cam.position), d).astype(np.float32))


def nearest(hits: Sequence[Hits | None], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
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
    cam = scene.view
    return nearest([camera_hits(o, cam, width, height) for o in scene.objects], width, height)[0]


def pixel_centres(scene: Scene, *, size: int | Sequence[int]) -> np.ndarray:
    """(N, 2) (column, row) mean of each object's visible pixels (nan for a hidden one)."""
    ids = object_id_buffer(scene, size=size)
    out = np.full((len(scene.objects), 2), np.nan)
    for j in range(len(scene.objects)):
        rows, cols = np.nonzero(ids == j)
        if rows.size:
            out[j] = cols.mean() + 0.5, rows.mean() + 0.5
    return out
