"""Reader for the i-CLEVR on-disk layout, real or rendered.

A dataset folder holds objects.json (class -> index), an index file mapping image file -> label list
(train.json for a training set, labels.json for oracle renders), and the images, in `images/` or
`iclevr/` (the name the course's archive uses) or beside the JSON files.

Everything is checked before anything trains: every label against the vocabulary, every file's header
(refusing decompression bombs before decoding), then every image decoded in full (catching truncation).
A bad file found at epoch 40 would waste a GPU hour.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from trainers.data.errors import DataError
from trainers.data.imageset import ImageSet
from trainers.data.labels import check_condition_files, encode_labels, load_vocab, read_json

INDEX_FILES = ("train.json", "labels.json")
IMAGE_DIRS = ("images", "iclevr")
# 16.7 Mpx: 200x the original 320x240 frame. Anything larger is refused from its header alone, since a
# small PNG can declare a huge canvas and fill memory once decoded.
MAX_PIXELS = 4096 * 4096
# Bilinear on the whole frame, as torchvision's Resize((64, 64)) on a PIL image: the official evaluator
# was trained on such direct resizes, so a crop would shift the test distribution.
RESIZE = Image.Resampling.BILINEAR
RESIZE_TAG = "pil-bilinear-fullframe-v1"
# Pillow modes with 8-bit channels, taken through convert("RGB") (alpha dropped, palettes expanded, gray
# replicated). 16-bit RGB(A) PNGs open as RGB(A) already (Pillow keeps each channel's high byte).
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit gray PNGs: scaled, not clipped


def index_file(root: Path) -> Path:
    for name in INDEX_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root / INDEX_FILES[0]}: file not found (a dataset folder needs train.json or labels.json)"
    )


def image_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root


def read_index(root: Path) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """Validate the JSON side of a dataset: (classes, image files, (N, C) labels)."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    classes = load_vocab(root / "objects.json")
    check_condition_files(root, classes)
    index_path = index_file(root)
    raw = read_json(index_path)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{index_path}: expected a non-empty object mapping image file -> label list")
    files = sorted(raw)
    labels = np.stack([encode_labels(raw[f], classes, where=f"{index_path}: image {f}") for f in files])
    return classes, files, labels


def png_size(blob: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read without Pillow (whose own bomb check fires first)."""
    if blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR" and len(blob) >= 24:
        return struct.unpack(">II", blob[16:24])
    return None


def png_bit_depth(blob: bytes) -> int | None:
    """Bits per channel from a PNG's IHDR chunk (1, 2, 4, 8 or 16), None for other formats."""
    return blob[24] if png_size(blob) is not None and len(blob) > 24 else None


def to_rgb(im: Image.Image, path: Path, bit_depth: int | None = None) -> Image.Image:
    """A decoded image as 8-bit RGB, or a DataError naming the file and a mode that has no faithful
    conversion. 16-bit gray would be clipped by convert("RGB") (every value above 255 of 65535 turned
    white), so it is scaled to 8 bits by its high byte, as Pillow itself reads 16-bit RGB and RGBA PNGs."""
    if im.mode in SIXTEEN_BIT_GRAY or (im.mode == "I" and bit_depth == 16):
        gray = np.asarray(im).astype(np.uint16) >> 8  # (H, W)
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if im.mode not in EIGHT_BIT_MODES:
        raise DataError(
            f"{path}: image mode {im.mode!r} is not accepted (8-bit gray, palette, RGB, RGBA, CMYK, or a "
            "16-bit PNG); convert it to 8-bit RGB"
        )
    return im.convert("RGB")


def decode_image(path: Path, size: int, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bytes]:
    """One image file -> (uint8 (size, size, 3), sha256 digest of its bytes). Non-RGB modes are converted."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found (listed in the dataset's index)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    header = png_size(blob)
    if header is not None and header[0] * header[1] > max_pixels:
        raise DataError(
            f"{path}: image declares {header[0]}x{header[1]} pixels, over the limit of {max_pixels} "
            "(decompression bomb?); refused before decoding"
        )
    try:
        with Image.open(io.BytesIO(blob)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(
                    f"{path}: image declares {w}x{h} pixels, over the limit of {max_pixels} "
                    "(decompression bomb?); refused before decoding"
                )
            im.load()
            rgb = to_rgb(im, path, png_bit_depth(blob))
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: refused before decoding, too large ({err})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or not a PNG/JPEG)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        zlib.error,
    ) as err:
        raise DataError(f"{path}: corrupt or truncated image ({err})") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESIZE)
    return np.asarray(rgb, dtype=np.uint8), hashlib.sha256(blob).digest()


def read_iclevr(
    root: str | Path, *, size: int = 64, workers: int | None = None, progress: bool = True
) -> ImageSet:
    """Read and fully validate a dataset folder into an ImageSet at size x size."""
    root = Path(root)
    classes, files, labels = read_index(root)
    folder = image_dir(root)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder / missing[0]}: image file not found ({len(missing)} listed file(s) missing)"
        )
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    digest = hashlib.sha256()
    for name in ("objects.json", index_file(root).name):
        digest.update((root / name).read_bytes())
    digest.update(f"{RESIZE_TAG}:{size}".encode())
    # Pillow and hashlib release the GIL while decoding and hashing, so threads use every core
    # without pickling images between processes.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda f: decode_image(folder / f, size), files)
        bar = tqdm(
            results,
            total=len(files),
            desc=f"reading {root.name}",
            unit="img",
            disable=None if progress else True,
        )
        for i, (image, file_digest) in enumerate(bar):
            images[i] = image
            digest.update(files[i].encode() + file_digest)
    return ImageSet(
        images=images,
        labels=labels,
        files=tuple(files),
        classes=classes,
        fingerprint=digest.hexdigest()[:16],
        name=root.name,
    )
