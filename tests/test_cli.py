"""The `halluscope` command itself: help, version, and the one-line error contract."""

import subprocess
import sys

import pytest
import torch

from halluscope.cli import build_parser, main
from halluscope.device import pick_device
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


@pytest.mark.parametrize("command", [["sample", "--gpt", "g", "--input", "x.png", "--out", "o"],
                                     ["probe", "--gpt", "g", "--data", "d", "--out", "o"],
                                     ["train-tokenizer", "--kind", "image", "--data", "d", "--out", "o"],
                                     ["tokenize", "--tokenizer", "t", "--data", "d", "--out", "o"],
                                     ["app", "--models", "m"]])
def test_a_device_this_machine_lacks_is_one_line_before_anything_runs(command, capsys):
    bad = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        assert main([*command, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"halluscope {command[0]}: error: --device") and err.count("\n") == 1, err


def test_pick_device_defaults_to_cuda_only_when_there_is_one():
    assert pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
