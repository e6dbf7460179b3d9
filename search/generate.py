"""Generate images for a label file with a registered generator.

    python -m search.generate --model models:/clevr-cgan@champion --labels new_test.json --out grid.png \
        [--per-image DIR] [--seed 0] [--tracking-uri URI]

--labels is a JSON list of label-name lists (i-CLEVR's test.json / new_test.json format); the bare names
test and new_test mean the bundled i-CLEVR files. Writes one grid (8 per row) and, with --per-image,
DIR/0000.png ... one file per entry.

Every input is checked before anything is written: the label file (each entry a non-empty list of
distinct names), --out and --per-image, the model URI, then each label against the model's own classes.
The grid is written to a temporary sibling and renamed, so a failure never leaves half a file where an
earlier grid was.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from search.options import (
    HelpFormatter,
    OneLineParser,
    default_home,
    tracking_scheme_problem,
    tracking_unreachable,
    tracking_uri_or_default,
)
from trainers.cli import output_file, output_folder, run_command, seed_int
from trainers.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what the grid writer (Pillow, by suffix) is asked to write
REGISTRY_SCHEMES = ("models:/", "runs:/")  # model URIs resolved through the tracking store


class GenerateError(ValueError):
    """A bad label file, model or output: str(err) is one line naming it."""


def read_label_sets(text: str) -> list[list[str]]:
    """The label sets of a JSON file (or of the bundled test / new_test): each a non-empty list of distinct
    names (a bare string is one name). An empty set would ask for an unconditioned image: refused."""
    from trainers.data.labels import SPEC_FILES, spec_file

    path = Path(text)
    if not path.is_file() and f"{text}.json" in SPEC_FILES:
        path = spec_file(f"{text}.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenerateError(f"--labels {text}: file not found (or the bundled test / new_test)") from None
    except IsADirectoryError:
        raise GenerateError(f"--labels {text}: is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GenerateError(
            f"--labels {text}: cannot read ({getattr(err, 'strerror', None) or err})"
        ) from None
    except json.JSONDecodeError as err:
        raise GenerateError(
            f"--labels {text}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(raw, list) or not raw:
        raise GenerateError(f"--labels {text}: expected a non-empty JSON list of label-name lists")
    sets = []
    for i, entry in enumerate(raw):
        labels = [entry] if isinstance(entry, str) else entry
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise GenerateError(f"--labels {text}: entry {i} is {entry!r}, expected a list of label names")
        if not labels:
            raise GenerateError(
                f"--labels {text}: entry {i} is an empty label set [] (it would ask for an unconditioned "
                "image); give at least one label"
            )
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise GenerateError(f"--labels {text}: entry {i} repeats {', '.join(map(repr, repeated))}")
        sets.append(labels)
    return sets


def check_labels(label_sets: list[list[str]], classes: list[str], source: str, model: str) -> None:
    """Every label a class of the model (its classes are the data it was trained on)."""
    known = set(classes)
    for i, labels in enumerate(label_sets):
        unknown = [x for x in labels if x not in known]
        if unknown:
            shown = ", ".join(map(repr, classes[:4]))
            raise GenerateError(
                f"--labels {source}: entry {i}: unknown label {unknown[0]!r}: the model {model} knows "
                f"{len(classes)} classes ({shown}, ...)"
            )


def _store_problem(model: str, tracking_uri: str) -> str | None:
    """Why a models:/ or runs:/ URI cannot resolve in `tracking_uri`, found without touching the store (a
    missing SQLite file would otherwise be created, empty, by the lookup)."""
    if not model.startswith(REGISTRY_SCHEMES):
        return None
    problem = tracking_scheme_problem(tracking_uri) or tracking_unreachable(tracking_uri)
    if problem:
        return f"--tracking-uri {tracking_uri}: {problem}"
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.is_file():
            return (
                f"--model {model}: no MLflow store at {db} (nothing promoted there yet: run a search and "
                "python -m search.promote, or give --tracking-uri)"
            )
    return None


def load_generator_model(model: str):
    """The pyfunc model at `model` and its GeneratorModel; a URI that is not one is a GenerateError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from search.pyfunc import GeneratorModel

    local = Path(model)
    if "://" not in model and ":/" not in model:
        if not local.exists():
            raise GenerateError(
                f"--model {model}: no such model folder or URI (e.g. models:/clevr-cgan@champion)"
            )
        if local.is_file():
            raise GenerateError(
                f"--model {model}: a file, not an MLflow model (a trainer checkpoint is promoted first with "
                "python -m search.promote; then use models:/NAME@champion)"
            )
    try:
        loaded = mlflow.pyfunc.load_model(model)
    except (MlflowException, OSError, ValueError) as err:
        if '"MLmodel"' in str(err):  # MLflow names its temporary download folder, not what was given
            raise GenerateError(
                f"--model {model}: not an MLflow model (no MLmodel file in it); a promoted generator is "
                "models:/NAME@ALIAS"
            ) from None
        raise GenerateError(f"--model {model}: {' '.join(str(err).split())}") from None
    try:
        inner = loaded.unwrap_python_model()
    except MlflowException:  # a model of another flavor (sklearn, ...) has no Python model inside
        inner = loaded
    if not isinstance(inner, GeneratorModel):
        raise GenerateError(
            f"--model {model}: a {type(inner).__name__} pyfunc model, not a cgan-search generator"
        )
    return loaded, inner


def write_images(images, out: Path, per_image: Path | None) -> None:
    """uint8 (B, H, W, 3) -> a grid PNG (8 per row) and optionally one PNG per image."""
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # (B, 3, H, W)
    atomic_write(out, lambda tmp: save_image(tensor, tmp, nrow=8, padding=2))
    if per_image is not None:
        per_image.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            atomic_write(per_image / f"{i:04d}.png", lambda tmp, im=image: Image.fromarray(im).save(tmp))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m search.generate",
        description="Images for a label file from a registered generator (MLflow pyfunc).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="model URI, e.g. models:/clevr-cgan@champion")
    p.add_argument("--labels", required=True, help="JSON list of label lists, or test / new_test (bundled)")
    p.add_argument("--out", type=output_file(*IMAGE_SUFFIXES), required=True, help="grid PNG to write")
    p.add_argument("--per-image", type=output_folder, help="also write one PNG per entry into this folder")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed (same seed, same images)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking/registry URI (default: sqlite:///$CGAN_SEARCH_HOME/mlflow.db)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> None:
        label_sets = read_label_sets(args.labels)
        tracking_uri = tracking_uri_or_default(args.tracking_uri, default_home())
        problem = _store_problem(args.model, tracking_uri)
        if problem:
            raise GenerateError(problem)
        import mlflow
        import pandas as pd
        from mlflow.exceptions import MlflowException

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines around a one-line refusal
        mlflow.set_tracking_uri(tracking_uri)
        model, generator = load_generator_model(args.model)
        check_labels(label_sets, generator.classes, args.labels, args.model)
        try:
            images = model.predict(pd.DataFrame({"labels": label_sets}), params={"seed": args.seed})
        except MlflowException as err:  # the model's input schema refused the label sets
            raise GenerateError(f"--labels {args.labels}: {' '.join(str(err).split())}") from None
        write_images(images, args.out, args.per_image)
        where = f" and {len(images)} files in {args.per_image}" if args.per_image else ""
        print(f"{len(images)} images of {images.shape[2]}x{images.shape[1]} written to {args.out}{where}")

    return run_command(
        body,
        (GenerateError,),
        prog=parser.prog,
        interrupted="interrupted (no file half-written)",
    )


if __name__ == "__main__":
    sys.exit(main())
