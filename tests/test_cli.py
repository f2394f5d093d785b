"""The `halluscope` command itself: help, version, and the one-line error contract."""

import subprocess
import sys

import pytest

from halluscope.cli import build_parser, main
from halluscope.errors import UserError


def test_console_script_runs_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "halluscope", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "world" in out.stdout  # the data layer's command is registered


def test_user_error_becomes_one_line_and_exit_2(capsys, monkeypatch):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    boom = sub.add_parser("boom")

    def fail(args):
        raise UserError("the folder x has no images")

    boom.set_defaults(func=fail)
    monkeypatch.setattr("halluscope.cli.build_parser", lambda: parser)
    assert main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == "halluscope boom: error: the folder x has no images\n"


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
