"""The scripts' error handling: input errors are one line, bugs keep their traceback, --debug shows it, Ctrl-C is
one line (a sweep says how to resume)."""
from __future__ import annotations

import pytest

from qdqtorch.errors import UsageError
from qdqtorch.pipeline.cli import pop_debug, run_cli


def test_user_error_is_one_line_and_a_bug_keeps_its_traceback(capsys):
    def bad_input():
        raise UsageError("settings.yaml: `batch` must be an integer")

    assert run_cli(bad_input) == 2
    assert capsys.readouterr().err == "error: settings.yaml: `batch` must be an integer\n"

    def bug():
        return {}["missing"]  # a KeyError from a bug, not from input

    assert run_cli(bug) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err and "bug" in err
    with pytest.raises(UsageError):  # --debug: the real exception, traceback and all
        run_cli(bad_input, debug=True)


def test_ctrl_c_is_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert run_cli(interrupted, interrupted="rerun the same command to resume") == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: rerun the same command to resume" and "Traceback" not in err
    assert pop_debug(["--out", "x", "--debug"]) == (["--out", "x"], True)
