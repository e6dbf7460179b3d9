"""The synthetic i-CLEVR renderer: file layout, determinism, label contracts, the i-CLEVR generator's rules
(one size, rubber, first object at the origin, unique pairs, distance and directional margins, 200 visible
pixels at 320x240), the scene JSON round trip and saved descriptions rendered identically, objects drawn in
their label's colour. Tiny renders (32-64 px) keep it fast."""

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
from trainers.data.raycast import project
from trainers.data.render import COLORS, SHAPES, render_label_sets, render_scene_files, render_training_set
from trainers.data.sampling import MARGIN, MIN_DIST, MIN_PIXELS, spot_ok
from trainers.data.scene import LAMP_LOCATIONS, LAMP_NAMES, Camera, from_json, load_scene, save_scene, to_json

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


def training_scenes(seed: int, n: int) -> list[R.Scene]:
    """Scenes drawn the way render_training_set draws them (labels first, then placement)."""
    return [R.training_scene(seed, i) for i in range(n)]


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
    assert {p.name for p in (train_set / "scenes").iterdir()} == {
        f"CLEVR_train_{s:06d}.json" for s in range(3)
    }
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
        scene = R.training_scene(0, s)
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


def test_camera_aims_at_the_origin_as_the_base_scene_does():
    """The un-jittered camera's axes are base_scene.blend's own (its matrix_world, dumped by Blender)."""
    cam = Camera(R.CAMERA_LOCATION)
    assert np.allclose(cam.right, [0.6563112735748291, 0.7544902563095093, 0.0], atol=1e-6)
    assert np.allclose(cam.up, [-0.35794052481651306, 0.3113630414009094, 0.8803019523620605], atol=1e-6)
    assert np.allclose(-cam.forward, [0.664179265499115, -0.5777521133422852, 0.47441375255584717], atol=1e-6)
    # A jittered camera is re-aimed: the origin stays at the frame's centre.
    moved = Camera((7.9, -6.1, 4.9))
    assert np.allclose(project(np.zeros((1, 3)), moved, 320, 240), [[160, 120]])


@pytest.fixture(scope="module")
def iclevr_scenes() -> list[R.Scene]:
    return [R.training_scene(3, i) for i in range(40)]


def test_iclevr_defaults(iclevr_scenes):
    """One size, rubber only, the first object at the origin, unique shape+colour pairs, jitters in range."""
    for scene in iclevr_scenes:
        assert scene.world == "iclevr" and len(scene.objects) == 3
        assert {o.radius for o in scene.objects} == {0.45}
        assert {o.material for o in scene.objects} == {"rubber"}
        assert (scene.objects[0].x, scene.objects[0].y) == (0.0, 0.0)
        assert len(set(scene.labels)) == 3
        assert all(tuple(o.rgb) == COLORS[o.color] for o in scene.objects)
        assert np.abs(np.subtract(scene.camera, R.CAMERA_LOCATION)).max() <= 0.5
        for name, p in zip(LAMP_NAMES, scene.lamps, strict=True):
            assert np.abs(np.subtract(p, LAMP_LOCATIONS[name])).max() <= 1.0
        for o in scene.objects[1:]:
            assert max(abs(o.x), abs(o.y)) <= 3.0
    rotations = [o.rotation for s in iclevr_scenes for o in s.objects]
    assert min(rotations) >= 0 and max(rotations) <= 2 * math.pi and np.std(rotations) > 1.0


def test_distance_and_directional_margins(iclevr_scenes):
    """Every later object keeps the generator's 0.25 gap (centre distance minus both radii, a placed
    cube counted at r/sqrt(2) as the generator stores it) and no offset along the camera's left / right /
    front / behind ground directions lies in (0, 0.4)."""
    for scene in iclevr_scenes:
        directions = scene.view.ground_directions()
        assert np.allclose([np.linalg.norm(v) for v in directions.values()], 1) and all(
            v[2] == 0 for v in directions.values()
        )
        for i, j in itertools.combinations(range(len(scene.objects)), 2):
            a, b = scene.objects[i], scene.objects[j]  # a placed first
            dx, dy = b.x - a.x, b.y - a.y
            assert math.hypot(dx, dy) - b.radius - a.placement_radius >= MIN_DIST
            for v in directions.values():
                assert not 0 < dx * v[0] + dy * v[1] < MARGIN


def test_spot_check_refuses_what_the_generator_refuses():
    cam = Camera(R.CAMERA_LOCATION)
    directions = list(cam.ground_directions().values())
    first = R.SceneObject("sphere", "red", COLORS["red"], "rubber", 0.45, 0.0, 0.0, 0.0)
    left, behind = cam.ground_directions()["left"][:2], cam.ground_directions()["behind"][:2]
    assert not spot_ok(*(left * 1.0), 0.45, [first], directions)  # 1.0 - 0.9 < 0.25
    assert spot_ok(*(left * 1.2 + behind * 0.5), 0.45, [first], directions)
    # Far enough but within 0.4 of the first along "behind": a directional-margin refusal.
    assert not spot_ok(*(left * 1.5 + behind * 0.3), 0.45, [first], directions)


def test_every_object_visible_in_every_prefix(iclevr_scenes):
    """The generator's 200 pixels at 320x240, for each object of every prefix (image _0, _1, _2)."""
    for scene in iclevr_scenes[:15]:
        for k in range(1, len(scene.objects) + 1):
            ids = R.object_id_buffer(scene.prefix(k), size=(320, 240))
            assert all((ids == j).sum() >= MIN_PIXELS for j in range(k)), (scene, k)


def test_full_clevr_world_keeps_two_sizes_and_metal():
    scenes = [R.training_scene(4, i, world="clevr") for i in range(40)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.radius for o in objects} == {0.7, 0.35}
    assert {o.material for o in objects} == {"rubber", "metal"}
    assert any((s.objects[0].x, s.objects[0].y) != (0.0, 0.0) for s in scenes)
    image = R.render_scene(scenes[0], size=32)[0]
    assert image.shape == (32, 32, 3)


def test_scene_json_round_trip(tmp_path: Path, iclevr_scenes):
    for scene in iclevr_scenes[:5] + [R.training_scene(4, 0, world="clevr")]:
        d = json.loads(json.dumps(to_json(scene)))
        assert d["format"] == "cgan-search/scene@1" and set(d["lamps"]) == set(LAMP_NAMES)
        assert from_json(d) == scene
        save_scene(tmp_path / "s.json", scene)
        assert load_scene(tmp_path / "s.json") == scene


@pytest.mark.parametrize(
    ("edit", "bad"),
    [
        (lambda d: d.pop("camera"), "'camera'"),
        (lambda d: d["lamps"].pop("Lamp_Fill"), "'Lamp_Fill'"),
        (lambda d: d["objects"][1].update(shape="cone"), "objects[1].shape"),
        (lambda d: d["objects"][0].update(rgb=[1, 2]), "objects[0].rgb"),
        (lambda d: d["objects"][0].update(radius=-1), "objects[0].radius"),
        (lambda d: d.update(format="other@2"), "format"),
        (lambda d: d.update(seed=-3), "seed"),
    ],
)
def test_bad_scene_json_names_the_key(tmp_path: Path, iclevr_scenes, edit, bad: str):
    d = to_json(iclevr_scenes[0])
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError) as err:
        load_scene(path)
    assert bad in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_saved_descriptions_render_identically(tmp_path: Path, train_set: Path):
    """The training writer saves one scene JSON per scene; rendering those files with the fast engine
    gives the very same images, byte for byte."""
    scene_files = sorted((train_set / "scenes").glob("*.json"))
    assert [p.name for p in scene_files] == [f"CLEVR_train_{s:06d}.json" for s in range(3)]
    out = render_scene_files(scene_files, tmp_path / "again", size=32, workers=1, progress=False)
    assert json.loads((out / "train.json").read_text()) == json.loads((train_set / "train.json").read_text())
    for p in (train_set / "images").iterdir():
        assert (out / "images" / p.name).read_bytes() == p.read_bytes()


def test_id_buffer_sees_occlusion():
    """The visibility check's instrument: a sphere right behind a cube, seen from the camera, is hidden."""
    cam = Camera(R.CAMERA_LOCATION)
    back = cam.ground_directions()["behind"][:2]
    cube = R.SceneObject("cube", "red", COLORS["red"], "rubber", 0.9, 0.0, 0.0, math.atan2(back[1], back[0]))
    sphere = R.SceneObject("sphere", "blue", COLORS["blue"], "rubber", 0.3, *(back * 1.0), 0.0)
    scene = R.Scene(R.CAMERA_LOCATION, tuple(LAMP_LOCATIONS[n] for n in LAMP_NAMES), (cube, sphere))
    ids = R.object_id_buffer(scene, size=64)
    assert (ids == 0).sum() > 50 and (ids == 1).sum() == 0


def test_objects_are_drawn_in_their_label_colour():
    """The median colour of an object's pixels is nearest, in chromaticity, to its own palette colour
    (the palette as sRGB, since it is linear albedo): catches label/colour mix-ups and washed-out shading."""
    palette = (np.array(list(COLORS.values())) / 255) ** (1 / 2.2)
    palette /= palette.sum(axis=1, keepdims=True)
    for scene in training_scenes(11, 25):
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
    scene = training_scenes(3, 1)[0]
    image = R.render_scene(scene, size=(160, 120))[0].astype(float).mean(axis=-1)
    ids = R.object_id_buffer(scene, size=(160, 120))
    for j in range(len(scene.objects)):
        assert np.ptp(image[ids == j]) > 30  # lit and unlit sides
    floor = image[ids == -1]
    assert np.percentile(floor, 99) - np.percentile(floor, 1) > 25  # cast shadows and light falloff
