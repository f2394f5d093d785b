"""Every case of the bad-input corpus (tests/bad_inputs.py) through the `halluscope` command:
a clear one-line error and exit 2, or the file skipped and counted, or an odd-but-valid file
used; never a traceback, never code from a file, never a silent success."""

import subprocess
import sys

import pytest
from bad_inputs import CASES, Corpus, check, run
from probe_helpers import one_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:Detected pickle protocol")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(tmp_path_factory.mktemp("bad"))


def test_the_corpus_covers_the_issue():
    groups = {case.group for case in CASES}
    assert {"images", "videos", "checkpoints", "configs", "pairs", "token caches", "CLI values"} <= groups
    assert len(CASES) >= 25 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.timeout(60)  # a hang is a failure too
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(corpus, case):
    assert check(corpus, case, run(corpus, case)) == ""


def test_a_bad_flag_from_the_real_entry_point_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "halluscope", "sample", "--gpt", str(tmp_path / "nope"),
                          "--input", "x.png", "--out", str(tmp_path / "o"), "--top-p", "1.5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["halluscope sample: error: top_p must be in (0, 1] (got 1.5)"]
