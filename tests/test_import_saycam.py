"""The SAYCam / ImageNet VQGAN-GPT family (eminorhan/vqgan-gpt): a minGPT saved the way its
`utils.save_checkpoint` saves it (model_state_dict, optimizer_state_dict, train_loss), with the
gimel head count (20) and the SAYCam grid (32 x 32 tokens, block 1023, 8192 codes) at a tiny
width. Its import must not read the optimizer state (a 730M model's is about 6 GB), and the
README's recipe, sampled with the peer's settings (top-k 128, temperature 0.96, half context),
must draw from exactly the distribution the peer's own loop computes."""

import subprocess
import sys

import pytest
import torch
from ref_mingpt import RefGPT

from halluscope.cli import main
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.settings import SamplingSettings
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers.config import preset as tokenizer_preset

VOCAB, BLOCK, LAYERS, HEADS, WIDTH = 8192, 1023, 3, 20, 40
OPTIMIZER_BYTES = 1 << 30


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return RefGPT(VOCAB, BLOCK, LAYERS, HEADS, WIDTH).eval()


@pytest.fixture(scope="module")
def saycam(tmp_path_factory, ref):
    """The checkpoint, with 1 GiB of Adam moments, and a 32 x 32-token tokenizer of 8192 codes."""
    root = tmp_path_factory.mktemp("saycam")
    moments = torch.zeros(OPTIMIZER_BYTES // 8)  # two of them: 1 GiB
    torch.save({"model_state_dict": ref.state_dict(), "train_loss": 3.2,
                "optimizer_state_dict": {"state": {0: {"exp_avg": moments, "exp_avg_sq": moments.clone()}},
                                         "param_groups": [{"lr": 3e-4}]}}, root / "say_gimel.pt")
    save_tokenizer(build_tokenizer(tokenizer_preset("image", "tiny", resolution=128, n_embed=VOCAB)), root / "vq-say")
    return root


def test_import_never_reads_the_optimizer_state(saycam):
    """The import runs in a fresh process whose peak memory stays below the optimizer state's
    size: the file is memory-mapped and only the model's tensors are touched."""
    out = saycam / "measured"
    # VmHWM, the peak resident memory of this process image (ru_maxrss would include the parent's before exec).
    code = ("import re, sys; from halluscope.cli import main; code = main(sys.argv[1:]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024); "
            "sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, "import-gpt", "--ckpt", str(saycam / "say_gimel.pt"),
                          "--n-layer", str(LAYERS), "--n-head", str(HEADS), "--tokenizer", str(saycam / "vq-say"),
                          "--grid", "32x32", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.strip().splitlines()[-1])
    assert peak < OPTIMIZER_BYTES, f"peak memory {peak / 2**20:.0f} MiB: the optimizer state was read"
    assert load_gpt(out).config.block_size == BLOCK


def test_readme_recipe_samples_the_peers_distribution(saycam, ref, tmp_path, monkeypatch, capsys):
    out = saycam / "gpt-say-gimel"
    assert main(["import-gpt", "--ckpt", str(saycam / "say_gimel.pt"), "--n-layer", str(LAYERS), "--n-head",
                 str(HEADS), "--tokenizer", str(saycam / "vq-say"), "--grid", "32x32", "--out", str(out)]) == 0
    model = load_gpt(out)
    prefix = torch.randint(0, VOCAB, (1, 512), generator=torch.Generator().manual_seed(1))  # the top 16 rows
    tokens, logprobs = model.generate(prefix, 40, 2, SamplingSettings(temperature=0.96, top_k=128),
                                      torch.Generator().manual_seed(2))
    with torch.no_grad():  # the peer's sample(): the whole prefix re-run, logits / T, all but the top 128 removed
        logits = ref(torch.cat([prefix.expand(2, -1), tokens], 1)[:, :-1])[:, 511:] / 0.96
        kth = logits.topk(128, dim=-1).values[..., -1:]
        expected = logits.masked_fill(logits < kth, float("-inf")).log_softmax(-1)
    assert torch.allclose(logprobs, expected.gather(-1, tokens[..., None])[..., 0], atol=1e-4)

    from halluscope.data import write_png
    write_png(torch.rand(3, 128, 128) * 2 - 1, tmp_path / "frame.png")
    monkeypatch.chdir(tmp_path)  # the README's second command, run from elsewhere
    assert main(["sample", "--gpt", str(out), "--input", "frame.png", "--context", "0.5", "--top-k", "128",
                 "--temperature", "0.96", "--samples", "2", "--out", "half", "--device", "cpu"]) == 0
    assert "2 continuations of 16/32 token rows (512 tokens)" in capsys.readouterr().out
