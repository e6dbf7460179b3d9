"""The Blender engine: real Blender renders a few scenes into the course layout at low samples, both engines
put the same scene's objects at the same pixels, and a missing or failing Blender is one clear line.

Needs Debian's blender (infra/setup.sh --test installs it) and the generator's assets (../shared/clevr-assets
or $CGAN_SEARCH_CLEVR_ASSETS); the rendering tests are skipped, saying why, where either is missing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.data.__main__ import main as data_main
from trainers.data.blender import BlenderError, find_assets, object_pixels, read_mask, render_scenes
from trainers.data.iclevr import read_iclevr
from trainers.data.raycast import object_id_buffer
from trainers.data.render import training_scene
from trainers.data.scene import load_scene, to_json

# Agreed with the fast renderer's owner (issue 13 item 7): at 320x240 the pixel centre of every visible object
# within 1 px, and its visible pixel count within 15% (Blender's cube and cylinder have rounded edges; the
# fast engine's are sharp). Measured at 02:00 on 36 objects: centres within 0.43 px, counts within 10%.
CENTRE_TOLERANCE_PX = 1.0
COUNT_TOLERANCE = 0.15
SCENES = 2
SAMPLES = 2  # geometry and the layout do not need clean frames; 2 samples keep the test short


def _have_blender() -> str | None:
    """Why the rendering tests cannot run here, or None."""
    if shutil.which("blender") is None:
        return "Blender is not installed (infra/setup.sh --test installs Debian's blender)"
    try:
        find_assets()
    except BlenderError as err:
        return str(err)
    return None


if os.environ.get("CI") and _have_blender() is not None:
    # CI installs Blender (infra/setup.sh --test) and runs beside ../shared: a skip there would hide a break
    raise RuntimeError(f"CI must run the Blender tests: {_have_blender()}")
needs_blender = pytest.mark.skipif(_have_blender() is not None, reason=str(_have_blender()))


@pytest.fixture(scope="module")
def blender_set(tmp_path_factory) -> tuple[Path, str]:
    """SCENES training scenes rendered by Blender through the command line, with index masks."""
    out = tmp_path_factory.mktemp("blender") / "set"
    argv = ["render", "--engine", "blender", "--scenes", str(SCENES), "--seed", "0"]
    assert data_main([*argv, "--samples", str(SAMPLES), "--masks", "--out", str(out)]) == 0
    return out, (out / "SHA256SUMS").read_text()


@pytest.mark.slow
@needs_blender
def test_blender_writes_the_course_layout(blender_set):
    out, _ = blender_set
    names = {f"CLEVR_train_{i:06d}_{k}.png" for i in range(SCENES) for k in range(3)}
    assert {p.name for p in (out / "iclevr").iterdir()} == names
    for name in names:
        with Image.open(out / "iclevr" / name) as image:
            assert image.size == (320, 240) and image.mode == "RGBA"  # as the course's frames
            assert image.getextrema()[3] == (255, 255)  # opaque
            assert not image.info.keys() - {"dpi"}  # no render-time text: the same scene, the same bytes
    train = json.loads((out / "train.json").read_text())
    for i in range(SCENES):
        scene = load_scene(out / "scenes" / f"CLEVR_train_{i:06d}.json")
        assert scene.world == "iclevr" and len(scene.objects) == 3
        for k in range(3):
            assert train[f"CLEVR_train_{i:06d}_{k}.png"] == scene.labels[: k + 1]
    data = read_iclevr(out, size=64)  # the project's own loader reads it as it reads the course's folder
    assert len(data) == 3 * SCENES and data.n_classes == 24
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def assert_same_pixels(fast, blender, where: str) -> None:
    """Each object's visible pixel count and pixel centre agree between the engines (the tolerances above)."""
    for j, ((n_fast, c_fast), (n_blender, c_blender)) in enumerate(zip(fast, blender, strict=True)):
        at = f"{where} object {j}"
        assert n_fast > 0 and n_blender > 0, at
        assert abs(n_fast - n_blender) <= COUNT_TOLERANCE * n_blender, (at, n_fast, n_blender)
        error = float(np.hypot(c_fast[0] - c_blender[0], c_fast[1] - c_blender[1]))
        assert error <= CENTRE_TOLERANCE_PX, (at, c_fast, c_blender)


@pytest.mark.slow
@needs_blender
def test_both_engines_place_objects_at_the_same_pixels(blender_set):
    out, _ = blender_set
    for i in range(SCENES):
        scene = load_scene(out / "scenes" / f"CLEVR_train_{i:06d}.json")
        for k in range(3):
            prefix = scene.prefix(k + 1)
            fast = object_pixels(object_id_buffer(prefix, size=(320, 240)), k + 1)
            blender = object_pixels(read_mask(out / "masks" / f"CLEVR_train_{i:06d}_{k}.png"), k + 1)
            assert_same_pixels(fast, blender, f"scene {i} image _{k}")


@needs_blender
def test_square_frames_show_the_same_squashed_view(tmp_path):
    """At a size that is not 4:3 both engines show the base scene's 4:3 view squashed (as the loaders squash
    320x240 frames), not a wider or taller field of view: at 160x160 a square field of view would move the
    objects' rows by several pixels and change their counts by a quarter."""
    scenes = [training_scene(0, i) for i in range(2)]
    files = render_scenes(
        [to_json(s) for s in scenes], tmp_path / "img", masks=tmp_path / "mask", size=(160, 160), samples=1
    )
    for i, (scene, f) in enumerate(zip(scenes, files, strict=True)):
        fast = object_pixels(object_id_buffer(scene, size=(160, 160)), 3)
        assert_same_pixels(fast, object_pixels(read_mask(f.masks[2]), 3), f"scene {i} at 160x160")


@pytest.mark.slow
@needs_blender
def test_an_interrupted_set_resumes_to_the_same_bytes(blender_set, capsys):
    """A scene missing a file (as after a kill: files are renamed into place whole) is rendered again, the
    others are kept, and the set's checksum comes out as before: Cycles is deterministic for a seed."""
    out, sums = blender_set
    (out / "iclevr" / "CLEVR_train_000001_2.png").unlink()
    kept = (out / "iclevr" / "CLEVR_train_000000_0.png").stat().st_mtime_ns
    argv = ["render", "--engine", "blender", "--scenes", str(SCENES), "--seed", "0"]
    assert data_main([*argv, "--samples", str(SAMPLES), "--masks", "--out", str(out)]) == 0
    assert "(1 rendered now" in capsys.readouterr().out
    assert (out / "iclevr" / "CLEVR_train_000000_0.png").stat().st_mtime_ns == kept
    assert (out / "SHA256SUMS").read_text() == sums
    # Other settings in the same folder would mix two sets: refused in one line, nothing touched.
    assert data_main([*argv, "--samples", str(SAMPLES + 1), "--masks", "--out", str(out)]) == 2
    assert "rendered with other settings (samples 2 -> 3)" in capsys.readouterr().err


@needs_blender
def test_a_failing_scene_is_named_with_blenders_last_lines(tmp_path):
    scene = json.loads((Path(__file__).parent / "fixtures" / "scene_iclevr.json").read_text())
    blocked = tmp_path / "out" / "second_0.png"
    blocked.mkdir(parents=True)  # Blender cannot rename its frame onto a folder
    with pytest.raises(BlenderError) as err:
        render_scenes([scene, scene], tmp_path / "out", names=["first", "second"], size=(32, 24), samples=1)
    message = str(err.value)
    assert "Blender failed (exit 1) at scene second" in message and "second_0.png" in message
    assert "\n" not in message
    assert (tmp_path / "out" / "first_0.png").is_file()  # what it finished before stays


def test_missing_blender_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CGAN_SEARCH_BLENDER", str(tmp_path / "no-blender"))
    out = tmp_path / "set"
    assert (
        data_main(["render", "--engine", "blender", "--scenes", "1", "--seed", "0", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install blender" in err and "CGAN_SEARCH_BLENDER" in err
    assert not out.exists()


def test_missing_assets_are_one_line(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["render", "--engine", "blender", "--scenes", "1", "--seed", "0", "--out", str(out)]
    if shutil.which("blender") is None:
        pytest.skip("Blender is looked for first; without it the assets are never checked")
    assert data_main([*argv, "--assets", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "base_scene.blend: not found" in err and "CGAN_SEARCH_CLEVR_ASSETS" in err
    assert not out.exists()


def test_blender_flags_are_refused_by_the_fast_engine(tmp_path, capsys):
    argv = ["render", "--scenes", "1", "--seed", "0", "--shadows", "off", "--out", str(tmp_path / "x")]
    assert data_main(argv) == 2
    assert "--shadows: only --engine blender takes them" in capsys.readouterr().err
