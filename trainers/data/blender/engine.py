"""The driver side of the Blender engine: find Blender and the generator's assets, hand scenes to
script.py in one Blender process per chunk of scenes, follow its progress, and read its index masks."""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from trainers.data.errors import DataError

SCRIPT = Path(__file__).with_name("script.py")
BLENDER_ENV = "CGAN_SEARCH_BLENDER"
ASSETS_ENV = "CGAN_SEARCH_CLEVR_ASSETS"
# Where this project's workspace keeps the i-CLEVR generator's assets: beside the checkout, in ../shared.
DEFAULT_ASSETS = Path(__file__).resolve().parents[3].parent / "shared" / "clevr-assets"
ASSET_FILES = (
    "base_scene.blend",
    "base_scene_no_shadow.blend",
    "shapes/SmoothCube_v2.blend",
    "shapes/Sphere.blend",
    "shapes/SmoothCylinder.blend",
    "materials/Rubber.blend",
    "materials/MyMetal.blend",
)
SCENE_FORMAT = "cgan-search/scene@1"
SHAPES = ("cube", "sphere", "cylinder")  # script.py's SHAPE_FILES keys
MATERIALS = ("rubber", "metal")  # script.py's MATERIAL_FILES keys
LAMPS = ("Lamp_Key", "Lamp_Back", "Lamp_Fill")
# Blender starts in ~1 s; a process per chunk bounds what one crash loses and any growth of its memory.
SCENES_PER_PROCESS = 50
TAIL_LINES = 8  # of Blender's output, quoted when it fails


class BlenderError(DataError):
    """Blender or the generator's assets are missing, or Blender failed on a scene."""


def find_blender(path: str | os.PathLike | None = None) -> str:
    """The blender executable: `path`, else $CGAN_SEARCH_BLENDER, else `blender` on PATH."""
    given = path if path is not None else os.environ.get(BLENDER_ENV)
    found = shutil.which(str(given)) if given else shutil.which("blender")
    if found is None:
        where = f"{given!r} (from {'the argument' if path is not None else BLENDER_ENV})" if given else "PATH"
        raise BlenderError(
            f"Blender not found in {where}: the Blender engine needs it; install Debian's package "
            f"(apt-get install blender) or set {BLENDER_ENV} to the blender executable"
        )
    return found


def find_assets(path: str | os.PathLike | None = None) -> Path:
    """The i-CLEVR generator's asset folder: `path`, else $CGAN_SEARCH_CLEVR_ASSETS, else ../shared/clevr-assets
    beside the checkout. Every file the script opens is checked here, before Blender starts."""
    given = path if path is not None else os.environ.get(ASSETS_ENV)
    root = Path(given).expanduser() if given else DEFAULT_ASSETS
    for name in ASSET_FILES:
        if not (root / name).is_file():
            raise BlenderError(
                f"{root / name}: not found; the Blender engine needs the i-CLEVR generator's assets "
                f"(base_scene.blend, shapes/, materials/): point {ASSETS_ENV} (or --assets) at their folder"
            )
    return root.resolve()


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _vector(value: object, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n and all(_number(v) for v in value)


def check_scene(scene: Mapping, where: str) -> None:
    """Refuse, in one line naming `where` and the key, what script.py could not render."""

    def bad(key: str, what: str) -> BlenderError:
        return BlenderError(f"{where}: {key}: {what}")

    if not isinstance(scene, Mapping):
        raise BlenderError(
            f"{where}: expected a scene description (a JSON object), got {type(scene).__name__}"
        )
    if scene.get("format") != SCENE_FORMAT:
        raise bad("format", f"expected {SCENE_FORMAT!r}, got {scene.get('format')!r}")
    if not _vector(scene.get("camera"), 3):
        raise bad("camera", f"expected [x, y, z], got {scene.get('camera')!r}")
    lamps = scene.get("lamps")
    if not isinstance(lamps, Mapping) or any(not _vector(lamps.get(k), 3) for k in LAMPS):
        raise bad("lamps", f"expected {{{', '.join(LAMPS)}: [x, y, z]}}, got {lamps!r}")
    seed = scene.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise bad("seed", f"expected an integer >= 0, got {seed!r}")
    objects = scene.get("objects")
    if not isinstance(objects, list) or not objects:
        raise bad("objects", "expected a non-empty list")
    for i, obj in enumerate(objects):
        key = f"objects[{i}]"
        if not isinstance(obj, Mapping):
            raise bad(key, "expected an object")
        if obj.get("shape") not in SHAPES:
            raise bad(f"{key}.shape", f"expected one of {', '.join(SHAPES)}, got {obj.get('shape')!r}")
        if obj.get("material") not in MATERIALS:
            raise bad(
                f"{key}.material", f"expected one of {', '.join(MATERIALS)}, got {obj.get('material')!r}"
            )
        rgb = obj.get("rgb")
        if not _vector(rgb, 3) or not all(0 <= c <= 255 for c in rgb):
            raise bad(f"{key}.rgb", f"expected three numbers 0-255, got {rgb!r}")
        if not (_number(obj.get("radius")) and obj["radius"] > 0):
            raise bad(f"{key}.radius", f"expected a number > 0, got {obj.get('radius')!r}")
        if not _vector(obj.get("position"), 2):
            raise bad(f"{key}.position", f"expected [x, y], got {obj.get('position')!r}")
        if not _number(obj.get("rotation")):
            raise bad(f"{key}.rotation", f"expected radians, got {obj.get('rotation')!r}")


@dataclass(frozen=True)
class SceneFiles:
    """What Blender writes for one scene: images[k] shows objects[0..k]; masks[k] is its index mask."""

    name: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...] | None

    def done(self) -> bool:
        return all(p.is_file() for p in self.images + (self.masks or ()))


def scene_files(name: str, n_objects: int, images: Path, masks: Path | None) -> SceneFiles:
    """The course's names: NAME_0.png .. NAME_{n-1}.png, in `images` (and the same names in `masks`)."""
    names = [f"{name}_{k}.png" for k in range(n_objects)]
    return SceneFiles(
        name,
        tuple(images / n for n in names),
        None if masks is None else tuple(masks / n for n in names),
    )


def render_scenes(
    scenes: Sequence[Mapping],
    out: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    masks: str | os.PathLike | None = None,
    size: tuple[int, int] = (320, 240),
    samples: int = 16,
    shadows: bool = True,
    threads: int | None = None,
    skip_done: bool = False,
    progress: bool = True,
    blender: str | os.PathLike | None = None,
    assets: str | os.PathLike | None = None,
    after_chunk: Callable[[], object] | None = None,
) -> list[SceneFiles]:
    """Render cgan-search/scene@1 descriptions with Blender and the generator's assets.

    Scene i gives out/NAME_k.png for k = 0 .. len(objects) - 1 (objects[0..k] present; NAME = names[i],
    default scene_IIIIII), and with `masks` a folder of index masks of the same names (read_mask). Every
    file is renamed into place whole, so with skip_done an interrupted call, run again, renders only the
    scenes that have not all their files. after_chunk() runs after each Blender process (every
    SCENES_PER_PROCESS scenes), e.g. to index what is finished. Returns every scene's files, in order.
    """
    if names is None:
        names = [f"scene_{i:06d}" for i in range(len(scenes))]
    if len(names) != len(scenes):
        raise ValueError(f"{len(names)} names for {len(scenes)} scenes")
    width, height = size
    if samples < 1 or min(width, height) < 1:
        raise ValueError(f"samples and size must be positive, got samples={samples}, size={size}")
    for i, scene in enumerate(scenes):
        check_scene(scene, f"scene {names[i]}")
    exe, root = find_blender(blender), find_assets(assets)
    out = Path(out)
    mask_dir = None if masks is None else Path(masks)
    files = [scene_files(n, len(s["objects"]), out, mask_dir) for n, s in zip(names, scenes, strict=True)]
    todo = [i for i, f in enumerate(files) if not (skip_done and f.done())]
    out.mkdir(parents=True, exist_ok=True)
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=len(scenes),
        initial=len(scenes) - len(todo),
        desc="blender",
        unit="scene",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for a in range(0, len(todo), SCENES_PER_PROCESS):
            chunk = todo[a : a + SCENES_PER_PROCESS]
            manifest = {
                "assets": str(root),
                "shadows": bool(shadows),
                "size": [int(width), int(height)],
                "samples": int(samples),
                "jobs": [
                    {
                        "scene": scenes[i],
                        "images": [str(p.absolute()) for p in files[i].images],
                        "masks": None
                        if files[i].masks is None
                        else [str(p.absolute()) for p in files[i].masks],
                    }
                    for i in chunk
                ],
            }
            _run_blender(exe, manifest, [files[i] for i in chunk], threads, bar)
            if after_chunk is not None:
                after_chunk()
    return files


def _run_blender(exe: str, manifest: dict, files: list[SceneFiles], threads: int | None, bar: tqdm) -> None:
    """One Blender process over the manifest's jobs; BlenderError naming the failing scene if it fails."""
    # --factory-startup: a user's preferences and add-ons never change what renders. -t goes before
    # --python, which renders: Blender applies arguments in order.
    command = [exe, "-b", "--factory-startup", "-noaudio"]
    if threads:
        command += ["-t", str(threads)]
    with tempfile.TemporaryDirectory(prefix="cgan-blender-") as tmp:
        path = Path(tmp) / "manifest.json"
        path.write_text(json.dumps(manifest), encoding="utf-8")
        command += ["--python-exit-code", "1", "--python", str(SCRIPT), "--", str(path)]
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        current = None
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = line.split()
                if len(event) == 3 and event[0] == "@cgan-search":
                    current = int(event[2])
                    if event[1] == "done":
                        bar.update(1)
                        current = None
                elif not line.startswith("Fra:"):  # Cycles' per-sample progress would push the error out
                    tail.append(line.strip())
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: never leave a render running behind us
                proc.kill()
                proc.wait()
    if code != 0:
        where = f"scene {files[current].name}" if current is not None else "start-up (before any scene)"
        said = " | ".join(t for t in tail if t) or "no output"
        raise BlenderError(f"Blender failed (exit {code}) at {where}; its last lines: {said}")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int8 index of the object seen at each pixel (-1 for the floor), as render.object_id_buffer.

    From Cycles' object-index pass, which keeps one sample per pixel (not the pixel centre: a sample drawn
    within the pixel filter), so edges are noisier than a ray cast through pixel centres."""
    return np.asarray(Image.open(path), dtype=np.int16).astype(np.int8) - 1


def object_pixels(ids: np.ndarray, n_objects: int) -> list[tuple[int, tuple[float, float] | None]]:
    """For each object j < n_objects: (visible pixel count, (column, row) mean of its pixel centres or None).

    Columns and rows count from the top-left pixel's centre at (0.5, 0.5), so a frame of width W spans 0..W.
    """
    rows, cols = np.indices(ids.shape)
    out: list[tuple[int, tuple[float, float] | None]] = []
    for j in range(n_objects):
        mine = ids == j
        count = int(mine.sum())
        centre = (float(cols[mine].mean() + 0.5), float(rows[mine].mean() + 0.5)) if count else None
        out.append((count, centre))
    return out
