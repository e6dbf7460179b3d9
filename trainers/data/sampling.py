"""Drawing scenes the way the i-CLEVR generator draws them (or full CLEVR's, with world="clevr").

The generator's rules (read from its script and simple_properties.json): the camera jitters +-0.5 per axis
and keeps aiming at the origin, the key, back and fill lamps jitter +-1.0 per axis, the sun stays; the
first object stands at the origin (i-CLEVR's fork), later ones uniformly in [-3, 3]^2; a spot is refused
when the distance of centres minus both radii is below 0.25, or when the offset along any of the camera's
left / right / front / behind ground directions is in (0, 0.4); after 50 refused spots, or when an object
shows fewer than 200 pixels at 320x240, the whole scene is placed again (camera and lamps kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from trainers.data.raycast import Hits, camera_hits, nearest
from trainers.data.scene import (
    CAMERA_JITTER,
    CAMERA_LOCATION,
    COLORS,
    LAMP_JITTER,
    LAMP_LOCATIONS,
    LAMP_NAMES,
    SHAPES,
    Camera,
    Scene,
    SceneObject,
    world,
)

PLACEMENT_RANGE = 3.0
MIN_DIST = 0.25  # the generator's --min_dist
MARGIN = 0.4  # its --margin
MIN_PIXELS = 200  # its --min_pixels_per_object, counted at its 320x240
VISIBILITY_SIZE = (320, 240)  # visibility is counted here whatever the render size: a scene is one scene
POSITION_TRIES = 50  # its --max_retries: refused spots before the whole scene is placed again
SCENE_TRIES = 200  # ours: a label set that fails this often cannot be placed at all
MAX_OBJECTS = 6  # label sets larger than this crowd CLEVR's 6x6 floor past reliable placement


def scene_rng(seed: int, *index: int) -> np.random.Generator:
    """The generator of one scene: independent of how scenes are split between workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, *index]))


def parse_label(label: str) -> tuple[str, str]:
    """ "red cube" -> ("red", "cube"). Unknown names raise KeyError; callers know the file."""
    color, _, shape = label.partition(" ")
    if color not in COLORS or shape not in SHAPES:
        raise KeyError(label)
    return color, shape


def _jitter(rng: np.random.Generator, base: Sequence[float], amount: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.asarray(base) + rng.uniform(-amount, amount, 3))


def spot_ok(x: float, y: float, radius: float, placed: Sequence[SceneObject], directions) -> bool:
    """The generator's distance and directional-margin checks of a new object at (x, y)."""
    for o in placed:
        dx, dy = x - o.x, y - o.y
        if math.hypot(dx, dy) - radius - o.placement_radius < MIN_DIST:
            return False
        for v in directions:
            if 0 < dx * v[0] + dy * v[1] < MARGIN:
                return False
    return True


def visible_enough(hits: Sequence[Hits | None]) -> bool:
    """Every object shows at least MIN_PIXELS pixels at 320x240 (what the generator counts)."""
    ids = nearest(hits, *VISIBILITY_SIZE)[0]
    counts = np.bincount(ids[ids >= 0].ravel(), minlength=len(hits))
    return bool((counts >= MIN_PIXELS).all())


def _place(rng: np.random.Generator, labels: Sequence[str], cam: Camera, world_name: str):
    """Objects for `labels` in order; None when a spot cannot be found or an object is hidden."""
    w = world(world_name)
    directions = list(cam.ground_directions().values())
    placed: list[SceneObject] = []
    hits: list[Hits | None] = []
    for i, label in enumerate(labels):
        color, shape = parse_label(label)
        radius = float(w.sizes[int(rng.integers(len(w.sizes)))])
        for _ in range(POSITION_TRIES):
            if i == 0 and w.first_at_origin:
                x, y = 0.0, 0.0
            else:
                x, y = (float(v) for v in rng.uniform(-PLACEMENT_RANGE, PLACEMENT_RANGE, 2))
            if spot_ok(x, y, radius, placed, directions):
                break
        else:
            return None
        obj = SceneObject(
            shape=shape,
            color=color,
            rgb=COLORS[color],
            material=w.materials[int(rng.integers(len(w.materials)))],
            radius=radius,
            x=x,
            y=y,
            rotation=float(rng.uniform(0, 2 * math.pi)),
        )
        placed.append(obj)
        hits.append(camera_hits(obj, cam, *VISIBILITY_SIZE))
        # Adding objects only hides more: a scene whose objects are all visible keeps them visible in
        # every prefix (the _0 and _1 images), and checking as we go refuses a hopeless scene early.
        if not visible_enough(hits):
            return None
    return tuple(placed)


def sample_scene(
    rng: np.random.Generator, labels: Sequence[str], *, world: str = "iclevr", size=None
) -> Scene:
    """A scene holding exactly `labels`, placed in that order; every prefix is itself a valid scene.

    `size` is accepted for older callers and ignored: visibility is counted at 320x240, so a scene does
    not depend on the size it is rendered at.
    """
    del size
    camera = _jitter(rng, CAMERA_LOCATION, CAMERA_JITTER)
    lamps = tuple(_jitter(rng, LAMP_LOCATIONS[name], LAMP_JITTER) for name in LAMP_NAMES)
    cam = Camera(camera)
    for _ in range(SCENE_TRIES):
        objects = _place(rng, labels, cam, world)
        if objects is not None:
            seed = int(rng.integers(2**31))
            return Scene(camera=camera, lamps=lamps, objects=objects, seed=seed, world=world)
    raise RuntimeError(f"could not place {list(labels)} in {SCENE_TRIES} scenes")
