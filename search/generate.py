"""Generate images for a label file with a registered generator.

    python -m search.generate --model models:/clevr-cgan@champion --labels new_test.json --out grid.png \
        [--per-image DIR] [--seed 0] [--tracking-uri URI]

--labels is a JSON list of label-name lists (i-CLEVR's test.json / new_test.json format); the bare names
test and new_test mean the bundled i-CLEVR files. Writes one grid (8 per row) and, with --per-image,
DIR/0000.png ... one file per entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from search.options import HelpFormatter, OneLineParser, default_home, tracking_uri_or_default


def read_label_sets(text: str) -> list[list[str]]:
    from trainers.data.labels import SPEC_FILES, spec_file

    path = Path(text)
    if not path.is_file() and f"{text}.json" in SPEC_FILES:
        path = spec_file(f"{text}.json")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{text}: cannot read a JSON label file ({err})") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(x, list | str) for x in raw):
        raise ValueError(f"{text}: expected a non-empty JSON list of label-name lists")
    return [x if isinstance(x, list) else [x] for x in raw]


def write_images(images, out: Path, per_image: Path | None) -> None:
    """uint8 (B, H, W, 3) -> a grid PNG (8 per row) and optionally one PNG per image."""
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    out.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # (B, 3, H, W)
    save_image(tensor, out, nrow=8, padding=2)
    if per_image is not None:
        per_image.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(per_image / f"{i:04d}.png")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m search.generate",
        description="Images for a label file from a registered generator (MLflow pyfunc).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="model URI, e.g. models:/clevr-cgan@champion")
    p.add_argument("--labels", required=True, help="JSON list of label lists, or test / new_test (bundled)")
    p.add_argument("--out", type=Path, required=True, help="grid PNG to write")
    p.add_argument("--per-image", type=Path, help="also write one PNG per entry into this folder")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking/registry URI (default: sqlite:///$CGAN_SEARCH_HOME/mlflow.db)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        label_sets = read_label_sets(args.labels)
        mlflow.set_tracking_uri(tracking_uri_or_default(args.tracking_uri, default_home()))
        model = mlflow.pyfunc.load_model(args.model)
        images = model.predict(pd.DataFrame({"labels": label_sets}), params={"seed": args.seed})
    except (ValueError, MlflowException, OSError) as err:
        print(f"python -m search.generate: error: {' '.join(str(err).split())[:300]}", file=sys.stderr)
        return 2
    write_images(images, args.out, args.per_image)
    where = f" and {len(images)} files in {args.per_image}" if args.per_image else ""
    print(f"{len(images)} images of {images.shape[2]}x{images.shape[1]} written to {args.out}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
