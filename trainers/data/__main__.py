"""Command line for datasets: render synthetic i-CLEVR, pack a folder, draw a contact sheet.

python -m trainers.data render --out DIR --scenes N --seed S [--size 64] [--world iclevr|clevr]
python -m trainers.data render --labels FILE --out DIR --seed S [--draws D]
python -m trainers.data render --engine blender --scenes N --out DIR --seed S [--samples 8] [--shadows on|off]
python -m trainers.data pack DIR --out FILE [--size 64]
python -m trainers.data show DIR --out sheet.png
python -m trainers.data check DIR [--size 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainers.cli import OneLineParser, output_file, output_folder, positive_int, run_command, seed_int
from trainers.data.blender.cli import add_arguments as add_blender_arguments
from trainers.data.blender.cli import refuse_blender_options
from trainers.data.blender.cli import run_render as run_blender_render
from trainers.data.errors import DataError


def parse_size(text: str) -> int | tuple[int, int]:
    """'64' -> 64 (square); '320x240' -> (320, 240)."""
    try:
        if "x" in text:
            w, h = (int(v) for v in text.lower().split("x"))
            size: int | tuple[int, int] = (w, h)
        else:
            size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected N or WxH, e.g. 64 or 320x240"
        ) from None
    if min(size if isinstance(size, tuple) else (size,)) < 8:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: at least 8 pixels per side")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m trainers.data",
        description="Datasets in the i-CLEVR layout: render synthetic scenes, pack, inspect.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser(
        "render",
        help="render a synthetic i-CLEVR training set, or oracle images for given label sets",
        description="Render CLEVR-like scenes (3 shapes x 8 colors, 1-3 objects) into the i-CLEVR layout: "
        "OUT/images/*.png, OUT/train.json (or labels.json with --labels), and the spec files. "
        "The same seed and arguments give byte-identical files.",
    )
    render.add_argument("--out", type=output_folder, required=True, help="output folder (created)")
    render.add_argument(
        "--scenes", type=positive_int, help="training scenes to render; each gives _0, _1, _2 images"
    )
    render.add_argument(
        "--labels", type=Path, help="a JSON list of label lists (e.g. test.json): render one scene per entry"
    )
    render.add_argument(
        "--draws", type=positive_int, default=1, help="with --labels: scenes per entry (default 1)"
    )
    render.add_argument(
        "--seed", type=seed_int, required=True, help="random seed >= 0 (determines every file)"
    )
    render.add_argument(
        "--size",
        type=parse_size,
        default=(320, 240),
        help="N (square) or WxH; default 320x240 as the original",
    )
    render.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    render.add_argument(
        "--world",
        choices=("iclevr", "clevr"),
        default="iclevr",
        help="iclevr (default: the i-CLEVR generator's one size, rubber, first object at the origin) or "
        "clevr (full CLEVR's two sizes and metal)",
    )
    add_blender_arguments(render)  # --engine, and the Blender engine's flags

    pk = sub.add_parser(
        "pack",
        help="validate a dataset folder and pack it into one Parquet file",
        description="Decode, validate and resize every image once into a Parquet pack "
        "(uint8 HxWx3, multi-hot labels, file names, content fingerprint).",
    )
    pk.add_argument("root", type=Path, help="dataset folder (objects.json, train.json, images/)")
    # .parquet: load_dataset (and so --data everywhere) recognises a pack by its suffix
    pk.add_argument("--out", type=output_file(".parquet"), required=True, help="output .parquet file")
    pk.add_argument("--size", type=positive_int, default=64, help="training resolution (default 64)")

    show = sub.add_parser("show", help="write a contact sheet of 64 images with their labels")
    show.add_argument("root", type=Path, help="dataset folder")
    show.add_argument("--out", type=output_file(".png", ".jpg", ".jpeg"), required=True, help="output PNG")
    show.add_argument("--count", type=positive_int, default=64, help="images on the sheet (default 64)")

    check = sub.add_parser("check", help="validate every file of a dataset folder, write nothing")
    check.add_argument("root", type=Path, help="dataset folder")
    check.add_argument("--size", type=positive_int, default=64, help="resolution to decode at (default 64)")
    return parser


def run(args: argparse.Namespace) -> str:
    """Carry out one command; return the line to print on success."""
    if args.command == "render" and args.engine == "blender":
        return run_blender_render(args)
    if args.command == "render":
        from trainers.data.render import render_label_sets, render_training_set

        refuse_blender_options(args)
        if (args.scenes is None) == (args.labels is None):
            raise DataError("render: give exactly one of --scenes N (training set) or --labels FILE (oracle)")
        if args.labels is not None:
            out = render_label_sets(
                args.labels,
                args.out,
                seed=args.seed,
                size=args.size,
                draws=args.draws,
                workers=args.workers,
                world=args.world,
            )
            return f"oracle renders of {args.labels} written to {out}"
        out = render_training_set(
            args.out,
            scenes=args.scenes,
            seed=args.seed,
            size=args.size,
            workers=args.workers,
            world=args.world,
        )
        return f"{args.scenes} scenes ({3 * args.scenes} images) written to {out}"
    if args.command == "pack":
        from trainers.data.pack import pack

        data = pack(args.root, args.out, size=args.size)
        return f"packed {len(data)} images at {args.size}x{args.size} into {args.out} (fingerprint {data.fingerprint})"
    if args.command == "show":
        from trainers.data.sheet import contact_sheet

        return f"contact sheet written to {contact_sheet(args.root, args.out, count=args.count)}"
    from trainers.data.iclevr import read_iclevr

    data = read_iclevr(args.root, size=args.size)
    return f"{args.root}: {len(data)} images, {data.n_classes} classes, all valid (fingerprint {data.fingerprint})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: print(run(args)), (DataError,), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
