"""Every command line parses its arguments before it imports torch, MLflow or Ray: `--help` and a refusal of a bad
argument take a fraction of a second, not the 3-7 CPU-s those imports cost (for users, and for the dozens of
refusal rows tests/test_bad_inputs.py runs). One subprocess runs them all, so a heavy import at the top of any
of these modules (or of a package __init__ they pass through) shows up here by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mlflow", "ray", "optuna")

# (module run as `python -m`, its argv): --help, then one bad argument each parser refuses by itself
RUNS = [
    ("trainers.train", ["--help"]),
    ("trainers.train", ["--preset", "x", "--data", "digits", "--epochs", "0"]),
    ("trainers.evaluator", ["--help"]),
    ("trainers.evaluator", ["fit", "--data", "digits", "--val-fraction", "1"]),
    ("trainers.data", ["--help"]),
    ("search.promote", ["--help"]),
    ("search.promote", ["--experiment", "x", "--fid-slack", "-1"]),
    ("search.generate", ["--help"]),
    ("search.generate", ["--seed", "-1"]),
]

PROBE = """
import contextlib, io, json, runpy, sys
heavy, runs = json.loads(sys.argv[1])
seen = []
for module, argv in runs:
    sys.argv = [module, *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as end:
            code = end.code
    loaded = sorted(name for name in heavy if name in sys.modules)
    seen.append([module, argv, code, loaded])
print(json.dumps(seen))
"""


def test_help_and_refusals_import_no_framework():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([HEAVY, RUNS])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for module, argv, code, loaded in json.loads(out):
        # --help ends with 0, a bad argument with argparse's 2 (trainers/cli.py: exit codes)
        assert code == (0 if argv == ["--help"] else 2), (module, argv, code)
        assert loaded == [], f"python -m {module} {' '.join(argv)} imported {loaded} before parsing"
