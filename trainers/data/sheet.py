"""Contact sheet: a grid of a dataset's images with their labels printed under each."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from trainers.data.errors import DataError
from trainers.data.iclevr import image_dir, index_file
from trainers.data.labels import read_json

CELL = 128  # pixels per image: 64x64 renders upscaled 2x stay legible next to their labels
LINE = 13


def contact_sheet(root: str | Path, out: str | Path, *, count: int = 64, columns: int = 8) -> Path:
    """Write a PNG grid of the first `count` images (in index order) of a dataset folder."""
    root, out = Path(root), Path(out)
    index = read_json(index_file(root))
    if not isinstance(index, dict) or not index:
        raise DataError(f"{index_file(root)}: expected a non-empty object mapping image file -> label list")
    files = sorted(index)[:count]
    rows = -(-len(files) // columns)
    text_h = 3 * LINE + 4  # i-CLEVR images hold at most 3 objects: one line each
    sheet = Image.new("RGB", (columns * CELL, rows * (CELL + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    folder = image_dir(root)
    for i, name in enumerate(files):
        x, y = (i % columns) * CELL, (i // columns) * (CELL + text_h)
        try:
            with Image.open(folder / name) as im:
                # Whole frame, aspect kept: 320x240 renders get a band above and below.
                scale = CELL / max(im.size)
                tile_size = (round(im.width * scale), round(im.height * scale))
                tile = im.convert("RGB").resize(tile_size, Image.Resampling.LANCZOS)
        except (OSError, SyntaxError) as err:
            raise DataError(f"{folder / name}: cannot read image ({err})") from None
        sheet.paste(tile, (x + (CELL - tile.width) // 2, y + (CELL - tile.height) // 2))
        for j, label in enumerate(index[name]):
            draw.text((x + 3, y + CELL + 2 + j * LINE), str(label), fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
