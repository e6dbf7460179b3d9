"""Lighting: the base scene's four lamps in Cycles' units, soft shadows, and the materials' response.

The numbers are base_scene.blend's (dumped with Blender 3.4.1 into /work/notes/base_scene_facts.json):
three square area lamps that TRACK_TO the origin and a sun fixed in place, world strength 0 (so nothing
but the lamps and their bounces lights the scene), the ground without a material (Cycles' default
surface: diffuse, albedo 0.8) and the Standard view transform (linear radiance -> sRGB, no tone curve).

Cycles' conventions, checked against Blender renders of the empty base scene (docs/data.md): an area lamp
of power P watts and area A emits radiance P / (4 A) from its front face, so a surface at distance d
receives irradiance P cos(lamp) cos(surface) / (4 d^2); a sun of strength S gives irradiance S cos(surface);
a diffuse surface of albedo a returns radiance a E / pi.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainers.data.scene import LAMP_NAMES, Scene


@dataclass(frozen=True)
class Lamp:
    name: str
    power: float  # watts (area lamps) or W/m^2 (the sun)
    color: tuple[float, float, float]  # linear
    size: float  # side of the square (area lamps) or angular diameter in radians (the sun)
    sun: bool = False


# base_scene_facts.json: type, energy, colour and size of each lamp (the SQUARE shape uses `size` only).
LAMPS: dict[str, Lamp] = {
    "Lamp_Key": Lamp("Lamp_Key", 100.0, (1.0, 0.9323092103004456, 0.8166635632514954), 0.5),
    "Lamp_Back": Lamp("Lamp_Back", 50.0, (1.0, 1.0, 1.0), 1.0),
    "Lamp_Fill": Lamp("Lamp_Fill", 30.0, (0.7616661787033081, 0.8177196383476257, 1.0), 0.5),
    "Area": Lamp("Area", 0.44999995827674866, (1.0, 1.0, 1.0), 0.19933730363845825, sun=True),
}
# The sun ("Area") shines along its -Z axis: the third column of its matrix_world, negated, is the way
# the light travels, so that column points towards the sun.
SUN_DIRECTION = tuple(
    float(c) for c in np.array([0.41449564695358276, -0.1945834904909134, 0.8890054225921631])
)
GROUND_ALBEDO = 0.8  # Cycles' default surface for a mesh with no material
# Indirect light on the floor, as radiance, by the distance s along the backdrop's normal: the ground's
# far edge curves up into a lit backdrop (the ground mesh's sweep), which lights the floor before it the
# more the closer it is. Measured as Blender's empty base scene minus this model's direct light (per
# 2-unit band of s; docs/data.md); it also stands in for the sweep itself at the top of the frame.
BACKDROP_NORMAL = (-0.9032076597213745, 0.4292037785053253)  # the ground's local -x (matrix_world)
INDIRECT_S = (-7.0, -1.0, 5.0, 11.0, 17.0, 23.0)
INDIRECT_RADIANCE = (0.0088, 0.0107, 0.0194, 0.0331, 0.0394, 0.0411)
# Light the floor sends back up to an object's lower half, as a share of the floor's own radiance seen
# over the lower hemisphere; fitted to Blender renders (object brightness by shape at 64x64, docs/data.md).
FLOOR_BOUNCE = 0.72
# Share of a lamp's light that still reaches a point an object shadows from it: Cycles' shadows are lit
# by the light that object and the floor round it bounce; fitted to the floor's shadow/lit ratios in
# Blender renders of the base scene (darkest 0.48, against 0.31 with opaque shadows).
SHADOW_FILL = 0.35
OBJECT_AMBIENT = 0.3  # the floor's indirect light reaching an object's upward faces, as a share


def indirect(x, y) -> np.ndarray:
    """Indirect radiance of the floor at (x, y) (before shadows, which the lamps' light alone has)."""
    s = x * BACKDROP_NORMAL[0] + y * BACKDROP_NORMAL[1]
    return np.interp(s, INDIRECT_S, INDIRECT_RADIANCE).astype(np.float32)


@dataclass(frozen=True)
class LampSetup:
    """One lamp placed for a scene: its position (or the sun's direction) and the frame of its disc/square."""

    lamp: Lamp
    position: np.ndarray  # (3,) world position; for the sun a unit vector towards it
    e1: np.ndarray  # (3,) half-side (area) or tangent radius (sun) along the lamp's first axis
    e2: np.ndarray
    normal: np.ndarray  # (3,) unit, the way the lamp faces (towards the origin); unused for the sun


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def lamp_setups(scene: Scene) -> list[LampSetup]:
    """The scene's lamps: the three area lamps at their jittered places, each aimed at the origin as
    TRACK_TO aims it (-Z forward, Y up), then the fixed sun."""
    out = []
    for name, position in zip(LAMP_NAMES, scene.lamps, strict=True):
        lamp = LAMPS[name]
        p = np.asarray(position, dtype=np.float64)
        forward = _unit(-p)
        x = _unit(np.cross(forward, [0.0, 0.0, 1.0]))
        y = np.cross(x, forward)
        out.append(LampSetup(lamp, p, x * lamp.size / 2, y * lamp.size / 2, forward))
    sun = LAMPS["Area"]
    centre = _unit(SUN_DIRECTION)
    x = _unit(np.cross(centre, [0.0, 0.0, 1.0]))
    radius = math.tan(sun.size / 2)
    out.append(LampSetup(sun, centre, x * radius, np.cross(x, centre) * radius, -centre))
    return out


def irradiance(setup: LampSetup, p, n) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(E, w): unshadowed irradiance (n,) from the lamp's centre at points p with normals n, and the
    unit directions w towards it (used for specular terms). The lamp's colour is applied by the caller."""
    lamp = setup.lamp
    if lamp.sun:
        w = tuple(np.float32(c) for c in setup.position)
        cos_s = np.maximum(n[0] * w[0] + n[1] * w[1] + n[2] * w[2], 0)
        return lamp.power * cos_s, w
    dx, dy, dz = (float(setup.position[i]) - p[i] for i in range(3))
    d2 = dx * dx + dy * dy + dz * dz
    inv = 1 / np.sqrt(d2)
    w = (dx * inv, dy * inv, dz * inv)
    cos_s = np.maximum(n[0] * w[0] + n[1] * w[1] + n[2] * w[2], 0)
    f = setup.normal
    cos_l = np.maximum(-(w[0] * f[0] + w[1] * f[1] + w[2] * f[2]), 0)
    return (lamp.power / 4) * cos_s * cos_l / d2, w


@dataclass(frozen=True)
class SampleOffsets:
    """Per-sample offsets on every lamp's square/disc, (h, w) float32 each in [-1, 1]."""

    u: np.ndarray
    v: np.ndarray


def lamp_offsets(width: int, height: int, ss: int, rng: np.random.Generator) -> SampleOffsets:
    """Offsets for the (height*ss, width*ss) sample grid: the ss*ss samples of a pixel spread over the
    lamp (a jittered ss x ss stratification), each pixel with its own random shift so that a penumbra
    averages into fine noise, as a path tracer's does, not into visible steps."""
    cells = (np.arange(ss, dtype=np.float32) + 0.5) / ss * 2 - 1
    su = np.tile(cells, (height * ss, width))  # column offset within the pixel's block
    sv = np.repeat(np.tile(cells, height)[:, None], width * ss, axis=1)
    shift = rng.uniform(-1, 1, (2, height, 1, width, 1)).astype(np.float32) / ss
    shu = np.broadcast_to(shift[0], (height, ss, width, ss)).reshape(height * ss, width * ss)
    shv = np.broadcast_to(shift[1], (height, ss, width, ss)).reshape(height * ss, width * ss)
    # Cell centres lie within 1/ss of the edge and shifts within 1/ss: every sample stays on the lamp.
    return SampleOffsets((su + shu).astype(np.float32), (sv + shv).astype(np.float32))


def shadow_rays(setup: LampSetup, p, offsets: tuple[np.ndarray, np.ndarray]):
    """Unit directions from points p to each sample's point on the lamp (three arrays like p[0])."""
    u, v = offsets
    e1, e2 = setup.e1, setup.e2
    c = setup.position
    if setup.lamp.sun:
        d = [float(c[i]) + float(e1[i]) * u + float(e2[i]) * v for i in range(3)]
    else:
        d = [float(c[i]) + float(e1[i]) * u + float(e2[i]) * v - p[i] for i in range(3)]
    inv = 1 / np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    return tuple((di * inv).astype(np.float32) for di in d)


def shadow_extent(setup: LampSetup, corners: np.ndarray) -> np.ndarray:
    """World points bounding where an object (box corners (8, 3)) can shadow the floor or other objects:
    the corners themselves and their projections onto the floor from the lamp's corners."""
    pts = [corners]
    for a in (-1.05, 1.05):
        for b in (-1.05, 1.05):
            if setup.lamp.sun:
                ray = setup.position + a * setup.e1 + b * setup.e2
                pts.append(corners - corners[:, 2:] / ray[2] * ray)
            else:
                q = setup.position + a * setup.e1 + b * setup.e2
                # Corners above the lamp's height would cast upwards; the lamps are always higher.
                s = q[2] / np.maximum(q[2] - corners[:, 2:], 1e-3)
                pts.append(q + (corners - q) * s)
    return np.concatenate(pts)
