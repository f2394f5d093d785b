"""scripts/app_abuse.py in its short form: 4 concurrent gradio_client clients x 3 requests,
good and bad uploads mixed, against one server on 127.0.0.1 with tiny models."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import app_abuse  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_concurrent_clients_with_good_and_bad_uploads(capsys):
    code = app_abuse.main(["--clients", "4", "--requests", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 clients, 13 requests" in out and "failures: 0" in out and "on 127.0.0.1" in out
