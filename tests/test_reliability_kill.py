"""scripts/kill_resume.py in its short form: train-tokenizer, tokenize, train-gpt and probe
each SIGKILLed twice at random moments and resumed; nothing left unreadable, no duplicated
step or record, and the resumed GPT equal to an uninterrupted one."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import kill_resume  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_runs_resume_intact(tmp_path, capsys):
    assert kill_resume.main(["--kills", "2", "--short", "--work", str(tmp_path)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for command in ("train-tokenizer", "tokenize", "train-gpt", "probe"):
        line = out.split(f"{command}: ")[1].splitlines()[0]
        assert "0 problems" in line and int(line.split()[0]) >= 1, line  # at least one kill landed mid-work
