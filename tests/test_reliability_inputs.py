"""Every case of the bad-input corpus (tests/bad_inputs.py) through the `halluscope` command:
a clear one-line error and exit 2, or the file skipped and counted, or an odd-but-valid file
used; never a traceback, never code from a file, never a silent success."""

import subprocess
import sys

import pytest
from bad_inputs import CASES, Corpus, check, png_of_zeros, run, video_of_zeros
from probe_helpers import one_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:Detected pickle protocol")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(tmp_path_factory.mktemp("bad"))


def test_the_corpus_covers_the_issue():
    groups = {case.group for case in CASES}
    assert {"images", "videos", "checkpoints", "configs", "model folders", "pairs", "token caches",
            "CLI values"} <= groups
    assert len(CASES) >= 75 and len({case.name for case in CASES}) == len(CASES)


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


BOMBS = """
import resource, sys
from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for read in (lambda: load_image(sys.argv[1], 64), lambda: load_clip(sys.argv[2], 64, 2)):
    try:
        read()
        print("decoded")
    except UserError as e:
        print(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_decompression_bombs_are_refused_within_a_memory_bound(tmp_path):
    """A 258 KB PNG of 9400² (265 MB decoded, under Pillow's own limit) and a 190 KB
    video of 4096² frames (50 MB each) are refused from their headers: reading them raises
    the peak memory of a fresh process by less than 64 MB."""
    png_of_zeros(tmp_path / "bomb.png", 9400, 9400)
    video_of_zeros(tmp_path / "bomb.mp4", 4096)
    out = subprocess.run([sys.executable, "-c", BOMBS, str(tmp_path / "bomb.png"), str(tmp_path / "bomb.mp4")],
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    image, clip, grown_mb = out.stdout.strip().splitlines()
    assert "too large to decode safely: 9400x9400" in image
    assert "frames too large to decode safely: 4096x4096" in clip
    assert int(grown_mb) < 64
