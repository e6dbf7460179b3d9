"""The scene description both engines render: objects, camera and lamps as plain, saved data.

A scene is what the i-CLEVR generator decides before it renders: the jittered camera and lamp positions,
and the objects in the order they were added (image _K shows objects[0..K]). `to_json` / `from_json` write
and read the project's scene format (`cgan-search/scene@1`, docs/data.md), one JSON file per scene, so the
fast ray caster (trainers.data.render) and Blender (trainers.data.blender) render the very same scenes.

The base scene's numbers below were dumped from the generator's own base_scene.blend
(../shared/clevr-assets/, BSD licence, the i-CLEVR fork of CLEVR's generator) with Blender 3.4.1:
/work/notes/base_scene_facts.json. Units are Blender's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trainers.data.errors import DataError

FORMAT = "cgan-search/scene@1"

# properties.json / simple_properties.json palette (0-255). The generator feeds RGB/255 straight into the
# Rubber material's Color input, i.e. as linear albedo; the frame is encoded to sRGB afterwards.
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
MATERIALS = ("rubber", "metal")


@dataclass(frozen=True)
class World:
    """A distribution of scenes: the generator's properties file and its placement rules."""

    name: str
    sizes: tuple[float, ...]  # object half-extents r: spheres and cylinders of radius r, cubes r/sqrt(2)
    materials: tuple[str, ...]
    first_at_origin: bool  # i-CLEVR's fork puts the first object at (0, 0)


WORLDS: dict[str, World] = {
    # i-CLEVR: simple_properties.json (one size, rubber only), first object at the origin.
    "iclevr": World("iclevr", sizes=(0.45,), materials=("rubber",), first_at_origin=True),
    # Full CLEVR: properties.json (large 0.7, small 0.35; rubber and metal), every object drawn uniformly.
    "clevr": World("clevr", sizes=(0.7, 0.35), materials=MATERIALS, first_at_origin=False),
}


def world(name: str) -> World:
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r}; choose one of {', '.join(WORLDS)}") from None


# The base scene (base_scene_facts.json): camera 35 mm lens on a 32 mm sensor (AUTO fit: the wider side,
# the 320 px width, spans it), TRACK_TO an Empty at the origin, so a jittered camera is re-aimed there.
CAMERA_LOCATION = (7.481131553649902, -6.5076398849487305, 5.34366512298584)
TAN_HALF_FOV_X = 16.0 / 35.0
ASPECT = 240 / 320  # the frame's height / width; every render covers this view
CAMERA_JITTER = 0.5  # the generator's --camera_jitter
LAMP_JITTER = 1.0  # its --key/--back/--fill_light_jitter
LAMP_NAMES = ("Lamp_Key", "Lamp_Back", "Lamp_Fill")
LAMP_LOCATIONS: dict[str, tuple[float, float, float]] = {
    "Lamp_Key": (6.446710109710693, -2.905174732208252, 4.258398056030273),
    "Lamp_Back": (-1.168501377105713, 2.646024465560913, 5.815736770629883),
    "Lamp_Fill": (-4.671124458312988, -4.01359748840332, 3.0112245082855225),
}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    material: str
    radius: float  # the half-extent r of the generator (see World.sizes)
    x: float
    y: float
    rotation: float  # radians about the vertical axis (Blender's rotation_euler[2])

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def half_height(self) -> float:
        """The mesh's scale: r, or r/sqrt(2) for cubes (which makes r their corners' horizontal reach)."""
        return self.radius / math.sqrt(2) if self.shape == "cube" else self.radius

    @property
    def placement_radius(self) -> float:
        """The radius the generator keeps for a placed object's distance check: it stores r/sqrt(2) for
        cubes (its own bookkeeping) while the object being placed is checked with r."""
        return self.half_height

    def corners(self) -> np.ndarray:
        """(8, 3) corners of a box holding the object: the cube itself, else its axis-aligned box."""
        h = self.half_height
        half = h if self.shape == "cube" else self.radius
        c, s = (math.cos(self.rotation), math.sin(self.rotation)) if self.shape == "cube" else (1.0, 0.0)
        out = []
        for lx in (-half, half):
            for ly in (-half, half):
                for z in (0.0, 2 * h):
                    out.append((self.x + c * lx - s * ly, self.y + s * lx + c * ly, z))
        return np.array(out)


@dataclass(frozen=True)
class Camera:
    """A camera at `position` aimed at the origin as Blender's TRACK_TO (-Z forward, Y up) aims it."""

    position: tuple[float, float, float]
    forward: np.ndarray = field(init=False, repr=False, compare=False)
    right: np.ndarray = field(init=False, repr=False, compare=False)
    up: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        forward = _unit([-c for c in self.position])
        right = _unit(np.cross(forward, [0.0, 0.0, 1.0]))
        object.__setattr__(self, "forward", forward)
        object.__setattr__(self, "right", right)
        object.__setattr__(self, "up", np.cross(right, forward))

    def ground_directions(self) -> dict[str, np.ndarray]:
        """CLEVR's cardinal directions: the camera's -Z (behind) and -X (left) axes projected onto the
        ground plane and normalised; front and right are their opposites."""
        behind = _unit([self.forward[0], self.forward[1], 0.0])
        left = _unit([-self.right[0], -self.right[1], 0.0])
        return {"behind": behind, "front": -behind, "left": left, "right": -left}


@dataclass(frozen=True)
class Scene:
    camera: tuple[float, float, float]  # location after jitter; it aims at the origin
    lamps: tuple[tuple[float, float, float], ...]  # LAMP_NAMES' locations after jitter
    objects: tuple[SceneObject, ...]
    seed: int = 0  # the render's noise seed
    world: str = "iclevr"

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]

    @property
    def view(self) -> Camera:
        return Camera(self.camera)

    def prefix(self, k: int) -> Scene:
        """The scene of the first k objects (what image _{k-1} shows)."""
        return replace(self, objects=self.objects[:k])


def to_json(scene: Scene) -> dict:
    """The scene as the `cgan-search/scene@1` dict (json.dumps-able)."""
    return {
        "format": FORMAT,
        "world": scene.world,
        "camera": list(scene.camera),
        "lamps": {name: list(p) for name, p in zip(LAMP_NAMES, scene.lamps, strict=True)},
        "objects": [
            {
                "shape": o.shape,
                "color": o.color,
                "rgb": list(o.rgb),
                "material": o.material,
                "radius": o.radius,
                "position": [o.x, o.y],
                "rotation": o.rotation,
            }
            for o in scene.objects
        ],
        "seed": scene.seed,
    }


def _field(d: Mapping, key: str, where: str):
    if not isinstance(d, Mapping) or key not in d:
        raise DataError(f"{where}: missing key {key!r}")
    return d[key]


def _numbers(value, n: int, where: str) -> tuple[float, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: expected {n} numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise DataError(f"{where}: expected finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _choice(value, options: Sequence[str], where: str) -> str:
    if value not in options:
        raise DataError(f"{where}: {value!r} is not one of {', '.join(options)}")
    return value


def from_json(d: Mapping, *, where: str = "scene") -> Scene:
    """A Scene from a `cgan-search/scene@1` dict; a bad field raises DataError naming `where` and the key."""
    if _field(d, "format", where) != FORMAT:
        raise DataError(f"{where}: format {d['format']!r} is not {FORMAT!r}")
    lamps_in = _field(d, "lamps", where)
    lamps = tuple(
        _numbers(_field(lamps_in, name, f"{where}: lamps"), 3, f"{where}: lamps.{name}")
        for name in LAMP_NAMES
    )
    objects = []
    raw_objects = _field(d, "objects", where)
    if not isinstance(raw_objects, list):
        raise DataError(f"{where}: objects: expected a list")
    for i, o in enumerate(raw_objects):
        at = f"{where}: objects[{i}]"
        rgb = _numbers(_field(o, "rgb", at), 3, f"{at}.rgb")
        if not all(0 <= c <= 255 and c == int(c) for c in rgb):
            raise DataError(f"{at}.rgb: expected three integers 0-255, got {o['rgb']!r}")
        radius = _numbers([_field(o, "radius", at)], 1, f"{at}.radius")[0]
        if radius <= 0:
            raise DataError(f"{at}.radius: expected a positive number, got {radius!r}")
        x, y = _numbers(_field(o, "position", at), 2, f"{at}.position")
        objects.append(
            SceneObject(
                shape=_choice(_field(o, "shape", at), SHAPES, f"{at}.shape"),
                color=str(_field(o, "color", at)),
                rgb=tuple(int(c) for c in rgb),
                material=_choice(_field(o, "material", at), MATERIALS, f"{at}.material"),
                radius=radius,
                x=x,
                y=y,
                rotation=_numbers([_field(o, "rotation", at)], 1, f"{at}.rotation")[0],
            )
        )
    seed = _field(d, "seed", where)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"{where}: seed: expected an integer >= 0, got {seed!r}")
    return Scene(
        camera=_numbers(_field(d, "camera", where), 3, f"{where}: camera"),
        lamps=lamps,
        objects=tuple(objects),
        seed=seed,
        world=_choice(_field(d, "world", where), tuple(WORLDS), f"{where}: world"),
    )


def save_scene(path: str | Path, scene: Scene) -> None:
    Path(path).write_text(json.dumps(to_json(scene), indent=1) + "\n", encoding="utf-8")


def load_scene(path: str | Path) -> Scene:
    from trainers.data.labels import read_json

    return from_json(read_json(Path(path)), where=str(path))
