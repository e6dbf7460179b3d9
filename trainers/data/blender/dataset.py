"""Training sets rendered by Blender in the course's layout, resumable, with a checksum.

    OUT/iclevr/CLEVR_train_NNNNNN_K.png   320x240 RGBA, K = 0, 1, 2 (objects[0..K] of the scene)
    OUT/train.json, objects.json, test.json, new_test.json
    OUT/scenes/CLEVR_train_NNNNNN.json    the scene descriptions (cgan-search/scene@1): the fast engine
                                          renders the very same scenes from them
    OUT/masks/CLEVR_train_NNNNNN_K.png    with masks=True: Cycles' object-index pass (engine.read_mask)
    OUT/blender.json                      the settings the set was made with
    OUT/SHA256SUMS                        every file above (sha256sum -c checks it); its own sha256 is the
                                          set's checksum

Scenes are drawn exactly as the fast engine draws them (trainers.data.render.training_scene), so the same
seed gives the same scenes in both engines. A second call with the same arguments resumes: the settings and
every saved scene must match, and only scenes missing a file are rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trainers.data.blender.engine import (
    BlenderError,
    SceneFiles,
    find_assets,
    find_blender,
    render_scenes,
    scene_files,
)
from trainers.data.labels import spec_file
from trainers.files import atomic_write

SPEC_FILES = ("objects.json", "test.json", "new_test.json")
SETTINGS = "blender.json"
SUMS = "SHA256SUMS"
SETTINGS_FORMAT = "cgan-search/blender-set@1"


@dataclass(frozen=True)
class BlenderSet:
    path: Path
    scenes: int
    rendered: int  # scenes rendered by this call (the others were already complete)
    seconds: float
    checksum: str  # sha256 of SHA256SUMS


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _dumps(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def _claim(out: Path, settings: dict) -> None:
    """Write the settings file, or check that an earlier run's is the same."""
    path = out / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise BlenderError(f"{path}: unreadable ({err}); delete it or render into a new folder") from None
        changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if changed:
            raise BlenderError(
                f"{path}: this folder was rendered with other settings ({', '.join(changed)}); "
                "render into a new folder or delete it"
            )
        return
    _write_text(path, _dumps(settings))


def _save_scene(path: Path, description: dict) -> None:
    """The scene's description, or a check that the saved one is the same (a resumed set stays one set)."""
    text = _dumps(description)
    if path.exists():
        if path.read_text(encoding="utf-8") != text:
            raise BlenderError(
                f"{path}: differs from the scene this seed draws now (the scene sampler changed since this "
                "folder was started); render into a new folder"
            )
        return
    _write_text(path, text)


def write_checksums(out: Path) -> str:
    """SHA256SUMS over every file of the set (sorted relative paths); returns its own sha256."""
    lines = []
    for path in sorted(
        p for p in out.rglob("*") if p.is_file() and p.name != SUMS and not p.name.startswith(".")
    ):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(out).as_posix()}\n")
    text = "".join(lines)
    _write_text(out / SUMS, text)
    return hashlib.sha256(text.encode()).hexdigest()


def write_index(out: Path, files: list[SceneFiles], descriptions: list[dict]) -> int:
    """train.json over the scenes whose files are all there (an unfinished set is already usable;
    SHA256SUMS is written only once every scene is). Returns how many scenes it lists."""
    index, done = {}, 0
    for f, description in zip(files, descriptions, strict=True):
        if f.done():
            done += 1
            labels = [f"{o['color']} {o['shape']}" for o in description["objects"]]
            for k, image in enumerate(f.images):
                index[image.name] = labels[: k + 1]
    _write_text(out / "train.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    return done


def render_blender_set(
    out: str | os.PathLike,
    *,
    scenes: int,
    seed: int,
    samples: int = 16,
    shadows: bool = True,
    size: tuple[int, int] = (320, 240),
    world: str = "iclevr",
    masks: bool = False,
    threads: int | None = None,
    progress: bool = True,
    blender: str | os.PathLike | None = None,
    assets: str | os.PathLike | None = None,
) -> BlenderSet:
    """Render `scenes` training scenes (3 images each) with Blender into `out` (module docstring)."""
    from trainers.data.render import training_scene  # the fast engine's sampler: the same scenes
    from trainers.data.scene import to_json

    if scenes < 1 or samples < 1:
        raise ValueError(f"scenes and samples must be >= 1, got scenes={scenes}, samples={samples}")
    find_blender(blender), find_assets(assets)  # refuse before anything is written
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": SETTINGS_FORMAT,
        "scenes": scenes,
        "seed": seed,
        "samples": samples,
        "shadows": bool(shadows),
        "size": list(size),
        "world": world,
        "masks": bool(masks),
    }
    _claim(out, settings)
    names = [f"CLEVR_train_{i:06d}" for i in range(scenes)]
    descriptions = [to_json(training_scene(seed, i, world=world)) for i in range(scenes)]
    (out / "scenes").mkdir(exist_ok=True)
    for name, description in zip(names, descriptions, strict=True):
        _save_scene(out / "scenes" / f"{name}.json", description)
    for name in SPEC_FILES:
        shutil.copyfile(spec_file(name), out / name)
    mask_dir = out / "masks" if masks else None
    files = [
        scene_files(n, len(d["objects"]), out / "iclevr", mask_dir)
        for n, d in zip(names, descriptions, strict=True)
    ]
    before = sum(f.done() for f in files)  # what an earlier, interrupted run finished
    if before < scenes:
        (out / SUMS).unlink(missing_ok=True)  # SHA256SUMS present = every scene is there

    try:
        render_scenes(
            descriptions,
            out / "iclevr",
            names=names,
            masks=mask_dir,
            size=size,
            samples=samples,
            shadows=shadows,
            threads=threads,
            skip_done=True,
            progress=progress,
            blender=blender,
            assets=assets,
            after_chunk=lambda: write_index(out, files, descriptions),
        )
    finally:  # stopped or failed, what is finished stays usable
        write_index(out, files, descriptions)
    checksum = write_checksums(out)
    return BlenderSet(out, scenes, scenes - before, time.perf_counter() - start, checksum)
