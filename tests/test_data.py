"""The data layer: reader of the i-CLEVR layout, its validation, packs, digits, device batches, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainers.data as data
from trainers.data import DataError
from trainers.data.labels import decode_labels, load_vocab, spec_file
from trainers.data.pack import cache_dir

from .conftest import TINY_LABELS, make_iclevr_folder

CLASSES = load_vocab(spec_file("objects.json"))


def test_bundled_spec_matches_shared_copy():
    shared = Path(__file__).resolve().parents[2] / "shared" / "iclevr-spec"
    if not shared.is_dir():
        pytest.fail(f"{shared} is missing: CI runs with ../shared beside the checkout")
    for name in ("objects.json", "test.json", "new_test.json"):
        assert spec_file(name).read_bytes() == (shared / name).read_bytes(), name


def test_conditions_are_32_by_24_with_documented_label_counts():
    cond = data.iclevr_conditions()
    assert cond["test"].shape == cond["new_test"].shape == (32, 24)
    # Counts from the spec README: test {1: 6, 2: 12, 3: 14} = 72 labels, new_test {2: 12, 3: 20} = 84.
    assert cond["test"].sum() == 72 and cond["new_test"].sum() == 84
    assert sorted(np.bincount(cond["test"].sum(1).astype(int))[1:]) == [6, 12, 14]


def test_read_folder_resizes_whole_frame_and_encodes_labels(iclevr_folder):
    ds = data.read_iclevr(iclevr_folder, size=16, progress=False)
    assert ds.images.shape == (5, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.classes == CLASSES
    for i, name in enumerate(ds.files):
        assert sorted(decode_labels(ds.labels[i], CLASSES)) == sorted(TINY_LABELS[name])
    # Direct resize of the whole RGBA frame to RGB: same as PIL's bilinear resize of the converted image.
    with Image.open(iclevr_folder / "images" / ds.files[0]) as im:
        expected = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds.images[0], expected)


def test_fingerprint_tracks_content_and_resolution(iclevr_folder):
    a = data.read_iclevr(iclevr_folder, size=16, progress=False).fingerprint
    assert data.read_iclevr(iclevr_folder, size=16, progress=False).fingerprint == a
    assert data.read_iclevr(iclevr_folder, size=32, progress=False).fingerprint != a
    img = iclevr_folder / "images" / "CLEVR_train_000000_0.png"
    Image.new("RGB", (40, 30), "gray").save(img)
    assert data.read_iclevr(iclevr_folder, size=16, progress=False).fingerprint != a


def test_non_rgb_images_are_converted(tmp_path):
    root = make_iclevr_folder(tmp_path / "ds", {"a.png": ["red cube"], "b.png": ["blue cube"]})
    Image.new("L", (20, 20), 128).save(root / "images" / "a.png")
    Image.new("P", (20, 20), 3).save(root / "images" / "b.png")
    ds = data.read_iclevr(root, size=8, progress=False)
    assert ds.images.shape == (2, 8, 8, 3)
    assert (ds.images[0] == 128).all()


def test_pack_round_trip_is_exact(iclevr_folder, tmp_path):
    ds = data.pack(iclevr_folder, tmp_path / "p.parquet", size=16, progress=False)
    back = data.load_packed(tmp_path / "p.parquet")
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert (back.files, back.classes, back.fingerprint) == (ds.files, ds.classes, ds.fingerprint)
    assert back.images.flags.writeable


def test_load_dataset_uses_and_invalidates_the_cache(iclevr_folder):
    first = data.load_dataset(iclevr_folder, size=16, progress=False)
    packs = list(cache_dir().glob(f"{iclevr_folder.name}-16-*.parquet"))
    assert len(packs) == 1
    again = data.load_dataset(iclevr_folder, size=16, progress=False)
    assert again.fingerprint == first.fingerprint
    labels = json.loads((iclevr_folder / "train.json").read_text())
    labels["CLEVR_train_000000_0.png"] = ["green cube"]
    (iclevr_folder / "train.json").write_text(json.dumps(labels))
    changed = data.load_dataset(iclevr_folder, size=16, progress=False)
    assert changed.fingerprint != first.fingerprint
    assert decode_labels(changed.labels[0], CLASSES) == ["green cube"]


def test_digits_one_hot_and_upsampled():
    ds = data.load_dataset("digits", size=16)
    assert ds.images.shape == (1797, 16, 16, 3)
    assert (ds.labels.sum(1) == 1).all() and ds.n_classes == 10
    assert data.conditions_for(ds)["digits"].shape == (10, 10)
    with pytest.raises(DataError, match="size 20"):
        data.load_dataset("digits", size=20)


def test_device_data_samples_in_model_range():
    ds = data.load_dataset("digits", size=8)
    dd = data.DeviceData(ds, "cpu")
    x, y = dd.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 8, 8) and y.shape == (5, 10)
    assert x.min() >= -1 and x.max() <= 1
    x2, _ = dd.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    np.testing.assert_allclose(
        data.to_model_range(ds.images[:1]).numpy(), ds.images[:1].transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6
    )


# Each bad input: (how to break a valid folder, text the one-line message must contain).
def _drop_train_json(root):
    (root / "train.json").unlink()


def _unknown_label(root):
    (root / "train.json").write_text(json.dumps({"CLEVR_train_000000_0.png": ["pink cube"]}))


def _missing_image(root):
    (root / "images" / "CLEVR_train_000001_2.png").unlink()


def _truncated_png(root):
    path = root / "images" / "CLEVR_train_000001_1.png"
    path.write_bytes(path.read_bytes()[:200])


def _not_an_image(root):
    (root / "images" / "CLEVR_train_000001_1.png").write_bytes(b"hello, not a png")


def _empty_labels(root):
    (root / "train.json").write_text(json.dumps({"CLEVR_train_000000_0.png": []}))


def _duplicated_label(root):
    (root / "train.json").write_text(json.dumps({"CLEVR_train_000000_0.png": ["red cube", "red cube"]}))


def _bad_json(root):
    (root / "train.json").write_text('{"CLEVR_train_000000_0.png": ["red cube"')


def _decompression_bomb(root):
    # A valid PNG of 20000 x 20000 pixels compresses to ~1 MB; the reader must refuse it from its header.
    Image.new("L", (20000, 20000)).save(root / "images" / "CLEVR_train_000000_0.png", optimize=False)


BAD_INPUTS = {
    "missing_json": (_drop_train_json, "train.json: file not found"),
    "unknown_label": (_unknown_label, "image CLEVR_train_000000_0.png: unknown label 'pink cube'"),
    "missing_image": (_missing_image, "CLEVR_train_000001_2.png: image file not found"),
    "truncated_png": (_truncated_png, "CLEVR_train_000001_1.png: corrupt or truncated image"),
    "not_an_image": (_not_an_image, "CLEVR_train_000001_1.png: not a readable image"),
    "empty_labels": (_empty_labels, "image CLEVR_train_000000_0.png: empty label list"),
    "duplicated_label": (_duplicated_label, "duplicated label 'red cube'"),
    "bad_json": (_bad_json, "train.json: invalid JSON at line 1"),
    "decompression_bomb": (_decompression_bomb, "20000x20000 pixels, over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    root = make_iclevr_folder(tmp_path / "ds")
    breaker, message = BAD_INPUTS[case]
    breaker(root)
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.data", "pack", str(root), "--out", str(tmp_path / "p.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "p.parquet").exists(), "a failed pack must not leave a file behind"


def test_cli_check_and_show(iclevr_folder, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "trainers.data", "check", str(iclevr_folder)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "5 images" in ok.stdout, ok.stderr
    sheet = tmp_path / "sheet.png"
    from trainers.data.sheet import contact_sheet

    contact_sheet(iclevr_folder, sheet)
    with Image.open(sheet) as im:
        assert im.width == 8 * 128


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    # convert("RGB") of Pillow's I;16 clips at 255: all but the darkest 1/256 of the range turned white
    gray = (np.arange(20 * 20, dtype=np.uint32).reshape(20, 20) * 163).astype(np.uint16)  # 0 .. 65037
    root = make_iclevr_folder(tmp_path / "ds", {"a.png": ["red cube"]}, size=(20, 20))
    Image.fromarray(gray).save(root / "images" / "a.png")
    with Image.open(root / "images" / "a.png") as im:
        assert im.mode == "I;16"
    ds = data.read_iclevr(root, size=20, progress=False)
    np.testing.assert_array_equal(ds.images[0], np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, -1))


def test_image_modes_without_a_faithful_conversion_are_refused(tmp_path):
    root = make_iclevr_folder(tmp_path / "ds", {"a.png": ["red cube"]})
    Image.new("F", (20, 20), 0.5).save(root / "images" / "a.png", format="TIFF")
    with pytest.raises(DataError, match=r"a.png: image mode 'F' is not accepted .*convert it to 8-bit RGB"):
        data.read_iclevr(root, size=8, progress=False)


def test_a_folders_own_test_files_are_checked_with_its_images(tmp_path):
    root = make_iclevr_folder(tmp_path / "ds")
    first = data.load_dataset(root, size=8, progress=False)  # packs it: the next load is a cache hit
    (root / "new_test.json").write_text(json.dumps([["red cube"], ["pink cube"]]))
    for load in (data.read_iclevr, data.load_dataset):
        with pytest.raises(DataError, match=r"new_test.json: entry 1: unknown label 'pink cube'"):
            load(root, size=8, progress=False)
    (root / "new_test.json").write_text(json.dumps([["red cube"]]))
    assert data.load_dataset(root, size=8, progress=False).fingerprint == first.fingerprint
