"""The shared command-line pieces: integer flags name the bad value; errors end as one line and an exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
            "dcgan_bce",
            "--data",
            "digits",
            "--epochs",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--epochs: expected an integer >= 1, got '0'" in out.stderr
