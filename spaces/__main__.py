"""`python -m spaces check FILE [FILE ...] [--samples 200] [--seed 0]`: every sample must be a valid TrainConfig.
`python -m spaces sample FILE [--seed 0]`: print one sampled config as YAML.

Exit 0 with one summary line per file; exit 2 with one line on stderr (file, key, value) at the first problem."""

from __future__ import annotations

import sys

import yaml

from spaces.check import check_file
from spaces.space import SpaceError, load_space
from trainers.cli import OneLineParser, positive_int, run_command


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m spaces", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="sample configs from each file and validate them with TrainConfig"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--samples", type=positive_int, default=200, help="configs sampled per file (default 200)"
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i")
    sample = commands.add_parser("sample", help="print one sampled config")
    sample.add_argument("file", metavar="FILE")
    sample.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "check":
            for path in args.files:
                print(check_file(path, samples=args.samples, seed=args.seed), flush=True)
        else:
            print(yaml.safe_dump(load_space(args.file).sample(args.seed), sort_keys=False), end="")

    return run_command(body, (SpaceError,), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
