"""The shared command-line pieces: integer flags name the bad value; errors end as one line and an exit code."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from trainers import cli
from trainers.cli import int_at_least, run_command


@pytest.mark.parametrize("text", ["0", "-3", "x", "1.5", ""])
def test_positive_int_rejects_with_the_value(text):
    with pytest.raises(Exception, match=f"expected an integer >= 1, got {text!r}"):
        int_at_least(1)(text)


def test_int_at_least_accepts():
    assert int_at_least(0)("0") == 0 and int_at_least(1)("7") == 7


def test_listed_error_is_one_line_and_its_code(capsys):
    def fail():
        raise ValueError("bad\n  value in x.yaml")

    assert run_command(fail, (ValueError,)) == 2
    assert capsys.readouterr().err == "error: bad value in x.yaml\n"
    assert run_command(fail, (ValueError,), exit_codes={ValueError: 3}) == 3


def test_with_prog_the_line_names_the_command_and_ctrl_c_is_130(capsys):
    def refused():
        raise ValueError("x")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(refused, (ValueError,), prog="python -m p") == 2
    assert capsys.readouterr().err == "python -m p: error: x\n"
    assert run_command(interrupted, (), prog="python -m p") == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "python -m p: interrupted\n"
    codes = (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_DIVERGED, cli.EXIT_INTERRUPTED)
    assert codes == (0, 1, 2, 3, 130)  # documented in docs/search.md, "Exit codes": fixed


def test_os_error_names_the_file(capsys):
    def missing():
        open("/nonexistent/cgan-search-file")

    assert run_command(missing, (ValueError,)) == 2
    assert capsys.readouterr().err.startswith("error: /nonexistent/cgan-search-file: ")


def test_success_and_unlisted_errors():
    assert run_command(lambda: None, ()) == 0
    with pytest.raises(KeyError):  # a bug is not a user error: it keeps its traceback
        run_command(lambda: {}["k"], (ValueError,))


def test_train_cli_rejects_zero_epochs():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.train",
            "--preset",
            "dcgan_nonsat",
            "--data",
            "digits",
            "--epochs",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--epochs: expected an integer >= 1, got '0'" in out.stderr


# --- Argument types and the one-line parser every trainers CLI uses ------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (cli.seed_int, "-1", "expected an integer from 0 to 4294967295, got '-1'"),
        (cli.seed_int, str(2**32), f"got '{2**32}'"),
        (cli.positive_float, "nan", "expected a number > 0, got 'nan'"),
        (cli.positive_float, "0", "expected a number > 0, got '0'"),
        (cli.positive_float, "inf", "expected a number > 0, got 'inf'"),
        (cli.open_fraction, "1", "between 0 and 1 (exclusive), got '1'"),
        (cli.open_fraction, "x", "between 0 and 1 (exclusive), got 'x'"),
        (cli.power_of_two_size, "13", "power of two >= 8 (8, 16, 32, 64, 128), got '13'"),
        (cli.power_of_two_size, "4", "got '4'"),
        (cli.device, "bogus", "unknown device 'bogus'"),
        (cli.device, "tpu", "unknown device 'tpu'"),
    ],
)
def test_argument_types_name_the_value(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        kind(text)


def test_argument_types_accept():
    assert cli.seed_int("0") == 0 and cli.positive_float("2e-4") == 2e-4 and cli.open_fraction("0.1") == 0.1
    assert cli.power_of_two_size("64") == 64 and cli.device("cpu") == "cpu"


def test_output_paths_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "a-file").write_text("x")
    png = cli.output_file(".png")
    assert png(str(tmp_path / "new" / "deeper" / "grid.png")) == tmp_path / "new" / "deeper" / "grid.png"
    assert not (tmp_path / "new").exists()
    for text, message in [
        (tmp_path / "grid.gif", "expected a file name ending in .png"),
        (tmp_path / "a-file" / "grid.png", "a-file is a file, not a folder"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            png(str(text))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder; give a file name inside it"):
        cli.output_file()(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="exists and is not a folder"):
        cli.output_folder(str(tmp_path / "a-file"))


def test_one_line_parser_prints_one_line(capsys):
    p = cli.OneLineParser(prog="prog")
    p.add_argument("--n", type=cli.positive_int, required=True)
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--n", "0"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err
        == "prog: error: argument --n: expected an integer >= 1, got '0' (see --help)\n"
    )


# --- Each CLI's argument errors, in-process (the subprocess rows are in tests/test_bad_inputs.py) -------


def _mains():
    import search.generate
    import spaces.__main__
    import trainers.data.__main__
    import trainers.evaluator.__main__
    import trainers.train

    return {
        "train": trainers.train.main,
        "data": trainers.data.__main__.main,
        "evaluator": trainers.evaluator.__main__.main,
        "spaces": spaces.__main__.main,
        "generate": search.generate.main,
    }


TRAIN_ARGS = ["--preset", "dcgan_nonsat", "--data", "digits", "--epochs", "1"]


@pytest.mark.parametrize(
    ("cli_name", "argv", "message"),
    [
        ("train", [*TRAIN_ARGS, "--seed", "-1"], "--seed: expected an integer from 0 to 4294967295, got '-1'"),
        ("train", [*TRAIN_ARGS, "--device", "bogus"], "--device: unknown device 'bogus'"),
        ("train", [*TRAIN_ARGS, "--out", "{tmp}/a-file"], "a-file: exists and is not a folder"),
        ("train", [*TRAIN_ARGS, "--threads", "0"], "--threads: expected an integer >= 1, got '0'"),
        ("train", ["--data", "digits", "--epochs", "1"], "the following arguments are required: --preset"),
        ("data", ["render", "--out", "{tmp}/r", "--scenes", "1", "--seed", "-1"], "--seed: expected an integer from 0"),
        ("data", ["pack", "{tmp}", "--out", "{tmp}/p.txt"], "p.txt: expected a file name ending in .parquet"),
        ("data", ["show", "{tmp}", "--out", "{tmp}/sheet.xyz"], "sheet.xyz: expected a file name ending in .png"),
        ("data", ["check", "{tmp}", "--size", "0"], "--size: expected an integer >= 1, got '0'"),
        ("data", ["nope"], "invalid choice: 'nope'"),
        ("evaluator", ["fit", "--data", "digits", "--val-fraction", "2"], "--val-fraction: expected a number between 0"),
        ("evaluator", ["fit", "--data", "digits", "--lr", "-1"], "--lr: expected a number > 0, got '-1'"),
        ("evaluator", ["fit", "--data", "digits", "--out", "{tmp}/a-file/e.pt"], "a-file is a file, not a folder"),
        ("evaluator", ["score", "--evaluator", "e.pt", "--data", "digits", "--device", "x"], "unknown device 'x'"),
        ("generate", ["--model", "m", "--labels", "test", "--out", "{tmp}/g.png", "--seed", "1" + "0" * 23], "--seed: expected an integer from 0"),
        ("spaces", ["check", "spaces/smoke.yaml", "--samples", "x"], "--samples: expected an integer >= 1, got 'x'"),
        ("generate", ["--model", "m", "--labels", "test", "--out", "{tmp}"], "expected a file name ending in .png"),
        ("generate", ["--model", "m", "--labels", "test", "--out", "{tmp}/g.png", "--per-image", "{tmp}/a-file"],
         "--per-image: {tmp}/a-file: exists and is not a folder"),
    ],
)  # fmt: skip
def test_argument_errors_are_one_line_and_exit_2(cli_name, argv, message, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        _mains()[cli_name](argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message.replace("{tmp}", str(tmp_path)) in lines[0], lines
    assert not (tmp_path / "r").exists() and not (tmp_path / "g.png").exists()  # refused before any work


# --- What load_checkpoint and search.generate refuse, and how they say it -------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable torch checkpoint (truncated or corrupt)"),
        (b"\x00garbage" * 50, "not a readable torch checkpoint"),
        ({"model": {"w": 0}}, 'an evaluator checkpoint ({"model": state_dict}), not a trainer checkpoint'),
        (
            {"config": {}, "data": {}, "ema": False, "state_dict": {}},
            "a generator file (sampling weights only)",
        ),
        ({"format": 9}, "checkpoint format 9, this code reads format 1"),
        ([1, 2], "a list, not a trainer checkpoint"),
    ],
)
def test_load_checkpoint_names_the_file_and_what_it_holds(content, message, tmp_path):
    import torch

    from trainers.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    for mmap in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, mmap=mmap)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        if not isinstance(content, bytes):
            assert message in str(err.value)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[]]", "entry 0 is an empty label set []"),
        ('[["red cube", "red cube"]]', "entry 0 repeats 'red cube'"),
        ('[["red cube", 3]]', "entry 0 is ['red cube', 3], expected a list of label names"),
        ("[]", "expected a non-empty JSON list of label-name lists"),
        ('{"a": ["red cube"]}', "expected a non-empty JSON list of label-name lists"),
        ('[["red cube"]', "invalid JSON at line 1"),
    ],
)
def test_generate_refuses_bad_label_files(text, message, tmp_path):
    from search.generate import GenerateError, read_label_sets

    (tmp_path / "l.json").write_text(text)
    with pytest.raises(GenerateError, match=re.escape(message)):
        read_label_sets(str(tmp_path / "l.json"))


def test_generate_reads_bundled_and_mixed_label_files(tmp_path):
    from search.generate import check_labels, read_label_sets

    assert len(read_label_sets("new_test")) == 32
    (tmp_path / "l.json").write_text('["red cube", ["blue sphere", "gray cylinder"]]')
    sets = read_label_sets(str(tmp_path / "l.json"))
    assert sets == [["red cube"], ["blue sphere", "gray cylinder"]]
    check_labels(sets, ["red cube", "blue sphere", "gray cylinder"], "l.json", "m")
    with pytest.raises(ValueError, match="unknown label 'gray cylinder': the model m knows 2 classes"):
        check_labels(sets, ["red cube", "blue sphere"], "l.json", "m")
