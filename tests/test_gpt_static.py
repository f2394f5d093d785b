"""The static-shape decode path (gpt/static_decode.py: preallocated cache written at a device-
held position, attention over every position with the unwritten ones masked; captured as a CUDA
graph on a GPU) against the current cached path: the same tokens and log-probabilities under the
same generator, for every sampling setting, both block families, conditional models and
guidance; and its buffers reused across calls of one shape."""

import pytest
import torch

from halluscope.gpt.config import preset
from halluscope.gpt.llama import LlamaGPT
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings
from halluscope.gpt.static_decode import KEPT, static_decoder

SETTINGS = [SamplingSettings(), SamplingSettings(temperature=0.8, top_k=10), SamplingSettings(top_p=0.9),
            SamplingSettings(temperature=1.3, top_k=20, top_p=0.8)]


def model(variant: str):
    torch.manual_seed(0)
    common = {"vocab_size": 37, "block_size": 48}
    if variant == "gpt":
        return GPT(preset("tiny", **common)).eval(), None
    if variant == "gpt, conditional, factorized positions":
        return GPT(preset("tiny", **common, n_cond=2, cond_vocab_size=5, grid=(6, 8), factorized_pos=True)).eval(), \
            torch.tensor([[1, 4], [3, 0]])
    return LlamaGPT(preset("tiny", **common, block="llama", n_cond=1, cond_vocab_size=5, null_cond=4,
                           grid=(6, 8))).eval(), torch.tensor([[1], [3]])


@pytest.mark.parametrize("variant", ["gpt", "gpt, conditional, factorized positions", "llama, class-conditional"])
def test_static_decoding_equals_the_cached_path(variant):
    gpt, cond = model(variant)
    prefix = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(1))
    settings = SETTINGS + ([SamplingSettings(top_k=10, cfg_scale=2.5)] if variant.startswith("llama") else [])
    for s in settings:
        runs = [gpt.generate(prefix, 30, 3, s, torch.Generator().manual_seed(3), cond, static=static)
                for static in (True, False)]
        (tok_s, lp_s), (tok_c, lp_c) = runs
        assert tok_s.shape == (6, 30) and torch.equal(tok_s, tok_c), s
        assert torch.allclose(lp_s, lp_c, atol=1e-5), s


def test_decode_step_logits_equal_a_full_forward():
    gpt, _ = model("gpt")
    seq = torch.randint(0, 37, (3, 20), generator=torch.Generator().manual_seed(2))
    decoder = static_decoder(gpt, 3, 20)
    with torch.no_grad():
        steps = [decoder.prefill(seq[:, :5], None)] + [decoder.step(seq[:, i:i + 1]).clone() for i in range(5, 19)]
        full = gpt(seq[:, :19])[:, 4:]  # the predictions of tokens 5 .. 19
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_buffers_are_reused_for_one_shape_and_bounded():
    gpt, _ = model("gpt")
    prefix = torch.randint(0, 37, (2, 12))
    first = gpt.generate(prefix, 10, 2, generator=torch.Generator().manual_seed(0), static=True)
    decoder = static_decoder(gpt, 4, 21)  # 2 prefixes x 2 samples, 12 + 10 - 1 positions
    second = gpt.generate(prefix, 10, 2, generator=torch.Generator().manual_seed(0), static=True)
    assert static_decoder(gpt, 4, 21) is decoder  # the same cache (and, on CUDA, the same graph)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # a refilled cache leaves nothing behind
    for rows in range(1, KEPT + 2):
        static_decoder(gpt, rows, 8)
    assert len(gpt._static_decoders) == KEPT and static_decoder(gpt, 4, 21) is not decoder
