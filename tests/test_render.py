"""The synthetic i-CLEVR renderer: file layout, determinism, label contracts and the scene guarantees
(objects apart, in view, visible, drawn in their label's colour). Tiny renders (32-64 px) keep it fast."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.data import render as R
from trainers.data.errors import DataError
from trainers.data.render import COLORS, SHAPES, render_label_sets, render_training_set

SPEC = Path(R.__file__).parent / "spec"


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of mask whose four neighbours are in it too."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def training_scenes(seed: int, n: int, *, size, objects: int = 3) -> list[R.Scene]:
    """Scenes drawn the way render_training_set draws them (labels first, then placement)."""
    names = R.class_names()
    out = []
    for i in range(n):
        rng = R.scene_rng(seed, i)
        labels = [names[j] for j in rng.choice(len(names), size=objects, replace=False)]
        out.append(R.sample_scene(rng, labels, size=size))
    return out


@pytest.fixture(scope="module")
def train_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    assert render_training_set(out, scenes=3, seed=0, size=32, workers=1, progress=False) == out
    return out


def test_vocabulary_is_colors_times_shapes():
    names = R.class_names()
    assert len(names) == 24 == len(COLORS) * len(SHAPES)
    assert names[0] == "gray cube" and names[8] == "gray sphere" and names[23] == "yellow cylinder"
    assert {R.parse_label(n) for n in names} == set(itertools.product(COLORS, SHAPES))
    assert COLORS["cyan"] == (41, 208, 208)


def test_training_layout(train_set: Path):
    expected = {f"CLEVR_train_{s:06d}_{k}.png" for s in range(3) for k in range(3)}
    assert {p.name for p in (train_set / "images").iterdir()} == expected
    index = json.loads((train_set / "train.json").read_text())
    assert set(index) == expected
    for name in R.SPEC_FILES:
        assert (train_set / name).read_bytes() == (SPEC / name).read_bytes()
    for name in expected:
        with Image.open(train_set / "images" / name) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))


def test_training_labels_grow_by_one_distinct_class(train_set: Path):
    index = json.loads((train_set / "train.json").read_text())
    vocab = set(R.class_names())
    for s in range(3):
        labels = [index[f"CLEVR_train_{s:06d}_{k}.png"] for k in range(3)]
        assert [len(x) for x in labels] == [1, 2, 3]
        assert labels[1][:1] == labels[0] and labels[2][:2] == labels[1]
        assert len(set(labels[2])) == 3 and set(labels[2]) <= vocab


def test_prefix_images_show_the_same_earlier_objects(train_set: Path):
    """_1 is _0 plus an object: the first object's pixels barely change (same camera and place)."""
    index = json.loads((train_set / "train.json").read_text())
    for s in range(3):
        scene = training_scenes(0, s + 1, size=32)[s]
        assert scene.labels == index[f"CLEVR_train_{s:06d}_2.png"]
        first = R.object_id_buffer(scene, size=32) == 0
        img0, img1 = (
            np.asarray(Image.open(train_set / "images" / f"CLEVR_train_{s:06d}_{k}.png"), dtype=int)
            for k in (0, 1)
        )
        close = np.abs(img0 - img1).max(axis=-1)[first] <= 6
        assert close.mean() >= 0.8


def test_deterministic_across_worker_counts(tmp_path: Path):
    kwargs = dict(scenes=4, size=32, progress=False)
    a = render_training_set(tmp_path / "a", seed=7, workers=1, **kwargs)
    b = render_training_set(tmp_path / "b", seed=7, workers=2, **kwargs)
    c = render_training_set(tmp_path / "c", seed=8, workers=1, **kwargs)
    assert digests(a) == digests(b)
    assert (a / "train.json").read_text().endswith("\n")
    images_a = {k: v for k, v in digests(a).items() if k.startswith("images")}
    images_c = {k: v for k, v in digests(c).items() if k.startswith("images")}
    assert images_a.keys() == images_c.keys()
    assert all(images_a[k] != images_c[k] for k in images_a)


def test_rectangular_size(tmp_path: Path):
    render_training_set(tmp_path, scenes=1, seed=1, size=(48, 36), workers=1, progress=False)
    with Image.open(tmp_path / "images" / "CLEVR_train_000000_2.png") as im:
        assert im.size == (48, 36)


@pytest.mark.parametrize("size", [8, (32,), "64", (32.0, 32), True])
def test_bad_size_is_refused(tmp_path: Path, size):
    with pytest.raises(ValueError, match="size"):
        render_training_set(tmp_path / "x", scenes=1, seed=0, size=size, workers=1, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("draws", [1, 2])
def test_oracle_labels_match_the_file(tmp_path: Path, draws: int):
    sets = [["red cube"], ["gray sphere", "cyan cylinder"], ["yellow cube", "blue sphere", "green cylinder"]]
    label_file = tmp_path / "sets.json"
    label_file.write_text(json.dumps(sets))
    out = render_label_sets(
        label_file, tmp_path / "out", seed=3, size=32, draws=draws, workers=1, progress=False
    )
    index = json.loads((out / "labels.json").read_text())
    if draws == 1:
        expected = {f"oracle_{i:04d}.png": s for i, s in enumerate(sets)}
    else:
        expected = {f"oracle_{i:04d}_{d}.png": s for i, s in enumerate(sets) for d in range(draws)}
    assert index == expected
    assert {p.name for p in (out / "images").iterdir()} == set(expected)
    for name in R.SPEC_FILES:
        assert (out / name).read_bytes() == (SPEC / name).read_bytes()


def test_oracle_renders_the_bundled_test_file(tmp_path: Path):
    out = render_label_sets(SPEC / "test.json", tmp_path, seed=0, size=32, workers=1, progress=False)
    sets = json.loads((SPEC / "test.json").read_text())
    index = json.loads((out / "labels.json").read_text())
    assert [index[f"oracle_{i:04d}.png"] for i in range(len(sets))] == sets


@pytest.mark.parametrize(
    ("sets", "bad"),
    [
        ([["red cube"], ["pink cube"]], "pink cube"),
        ([["red cube", "red cube"]], "red cube"),
        (
            [
                [
                    "red cube",
                    "blue sphere",
                    "red cylinder",
                    "gray cube",
                    "gray sphere",
                    "cyan cube",
                    "cyan sphere",
                ]
            ],
            "7 labels",
        ),
    ],
)
def test_bad_label_sets_raise_data_error(tmp_path: Path, sets, bad: str):
    label_file = tmp_path / "sets.json"
    label_file.write_text(json.dumps(sets))
    with pytest.raises(DataError) as err:
        render_label_sets(label_file, tmp_path / "out", seed=0, size=32, progress=False)
    message = str(err.value)
    assert bad in message and str(label_file) in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize(("size", "objects"), [(64, 3), (32, 3), (64, R.MAX_OBJECTS), ((320, 240), 3)])
def test_every_object_visible_in_every_prefix(size, objects: int):
    width, height = R.parse_size(size)
    floor = R.min_pixels(width, height)
    for scene in training_scenes(21, 6 if width > 64 else 30, size=size, objects=objects):
        for k in range(1, objects + 1):
            prefix = R.Scene(scene.camera, scene.light, scene.objects[:k])
            ids = R.object_id_buffer(prefix, size=size)
            for j, obj in enumerate(prefix.objects):
                alone = (R.object_id_buffer(R.Scene(scene.camera, scene.light, (obj,)), size=size) == 0).sum()
                seen = (ids == j).sum()
                assert seen >= floor and seen >= R.MIN_VISIBLE_FRACTION * alone, (scene, j)


def test_id_buffer_sees_occlusion():
    """The visibility check's instrument: a small sphere right behind a large cube is hidden."""
    cam = np.array(R.CAMERA_POSITION)
    back = -cam[:2] / np.linalg.norm(cam[:2])  # away from the camera, along the floor
    cube = R.SceneObject("cube", "red", "large", "rubber", 0.0, 0.0, math.atan2(back[1], back[0]))
    sphere = R.SceneObject("sphere", "blue", "small", "rubber", *(back * 1.0), 0.0)
    scene = R.Scene(R.CAMERA_POSITION, (0.0, -0.6, 0.8), (cube, sphere))
    ids = R.object_id_buffer(scene, size=64)
    assert (ids == 0).sum() > 50 and (ids == 1).sum() == 0


def test_objects_apart_and_inside_the_frame():
    # Few draws land off-frame (~1 in 400), hence many crowded scenes at a small size.
    for scene in training_scenes(5, 250, size=32, objects=R.MAX_OBJECTS):
        for a, b in itertools.combinations(scene.objects, 2):
            assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius + R.MIN_GAP
        for j, obj in enumerate(scene.objects):
            corners = obj.corners()
            if obj.shape == "cube":  # the bounding radius bounds a turned cube (shrunk by sqrt(2))
                assert np.hypot(corners[:, 0] - obj.x, corners[:, 1] - obj.y).max() <= obj.radius + 1e-9
            assert corners[:, 2].min() == 0  # resting on the floor
            alone = R.object_id_buffer(R.Scene(scene.camera, scene.light, (obj,)), size=32) == 0
            assert alone.any()
            assert not (alone[0].any() or alone[-1].any() or alone[:, 0].any() or alone[:, -1].any()), (
                scene,
                j,
            )


def test_objects_are_drawn_in_their_label_colour():
    """The median colour of an object's pixels is nearest, in chromaticity, to its own palette colour
    (the palette as sRGB, since it is linear albedo): catches label/colour mix-ups and washed-out shading."""
    palette = (np.array(list(COLORS.values())) / 255) ** (1 / 2.2)
    palette /= palette.sum(axis=1, keepdims=True)
    for scene in training_scenes(11, 25, size=64):
        image = R.render_scene(scene, size=64)[0].astype(float)
        ids = R.object_id_buffer(scene, size=64)
        for j, obj in enumerate(scene.objects):
            mine = ids == j
            inner = interior(mine)  # edge pixels mix with the floor
            rgb = np.median(image[inner if inner.sum() >= 3 else mine], axis=0)
            nearest = list(COLORS)[int(np.argmin(((palette - rgb / rgb.sum()) ** 2).sum(axis=1)))]
            assert nearest == obj.color, (scene, j)


def test_shading_is_not_flat():
    """CLEVR look: objects are shaded solids with shadows on the floor, not flat clip-art."""
    scene = training_scenes(3, 1, size=(160, 120))[0]
    image = R.render_scene(scene, size=(160, 120))[0].astype(float).mean(axis=-1)
    ids = R.object_id_buffer(scene, size=(160, 120))
    for j in range(len(scene.objects)):
        assert np.ptp(image[ids == j]) > 30  # lit and unlit sides
    floor = image[ids == -1]
    assert np.percentile(floor, 99) - np.percentile(floor, 1) > 25  # cast shadows and light falloff
