"""The CUDA paths: xformers inside the model, cached sampling on the GPU, bf16 training.

CI has no GPU, so these skip there with the reason printed; `pytest -m gpu` runs them on a
machine that has one (docs/benchmarks.md records where they last ran)."""

import json
import warnings

import pytest
import torch
from test_gpt_train import cache, config, losses  # noqa: F401 (cache is a fixture)

from halluscope.gpt import attention
from halluscope.gpt.attention import resolve_backend, xformers_problem
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings
from halluscope.gpt.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def usable_backends() -> list[str]:
    return ["sdpa", "math"] + ([] if xformers_problem("cuda") else ["xformers"])


def test_auto_picks_xformers_without_a_warning_when_its_kernels_load(monkeypatch):
    problem = xformers_problem("cuda")
    if problem:
        pytest.skip(problem)
    monkeypatch.setattr(attention, "_fallback_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cuda")) == "xformers"


@pytest.mark.parametrize("backend", ["sdpa", "math", "xformers"])
def test_cached_generation_equals_uncached_on_cuda(backend):
    if backend not in usable_backends():
        pytest.skip(xformers_problem("cuda"))
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=37, block_size=48, attention=backend)).cuda().eval()
    prefix = torch.randint(0, 37, (2, 12), device="cuda")
    runs = []
    for use_cache in (True, False):
        g = torch.Generator(device="cuda").manual_seed(3)
        runs.append(model.generate(prefix, 16, num_samples=3, generator=g, settings=SamplingSettings(top_k=10),
                                   use_cache=use_cache))
    (tok_c, lp_c), (tok_u, lp_u) = runs
    assert tok_c.shape == (6, 16) and tok_c.device.type == "cuda"
    assert torch.equal(tok_c, tok_u)
    assert torch.allclose(lp_c, lp_u, atol=1e-4)


def test_cuda_graph_decoding_equals_the_eager_cached_path():
    """generate on CUDA defaults to the static path: its step captured once as a CUDA graph and
    replayed; the tokens must be those of the eager cached path under the same generator."""
    from halluscope.gpt.llama import LlamaGPT
    from halluscope.gpt.static_decode import static_decoder

    torch.manual_seed(0)
    for model, cond, s in [
        (GPT(preset("tiny", vocab_size=37, block_size=48)), None, SamplingSettings(top_k=10)),
        (LlamaGPT(preset("tiny", vocab_size=37, block_size=48, block="llama", n_cond=1, cond_vocab_size=5,
                         null_cond=4, grid=(6, 8))), torch.tensor([[1], [3]], device="cuda"),
         SamplingSettings(temperature=0.8, top_p=0.9, cfg_scale=2.0)),
    ]:
        model = model.cuda().eval()
        prefix = torch.randint(0, 37, (2, 12), device="cuda")
        runs = [model.generate(prefix, 30, 3, s, torch.Generator(device="cuda").manual_seed(3), cond, static=static)
                for static in (None, False)]
        assert torch.equal(runs[0][0], runs[1][0])
        assert torch.allclose(runs[0][1], runs[1][1], atol=1e-4)
        rows = 6 * (2 if s.guided else 1)
        assert static_decoder(model, rows, model.config.n_cond + 12 + 30 - 1).graph is not None  # captured, kept


def test_backends_agree_in_bf16_training_step():
    """Forward and backward through each usable backend give the same loss and gradients."""
    torch.manual_seed(0)
    base = GPT(preset("tiny", vocab_size=37, block_size=64)).cuda()
    x = torch.randint(0, 37, (4, 64), device="cuda")
    grads = {}
    for name in usable_backends():
        base.set_attention(name)
        base.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = base(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        grads[name] = (loss.item(), base.head.weight.grad.float().clone())
    ref_loss, ref_grad = grads["math"]
    for name, (loss, grad) in grads.items():
        assert abs(loss - ref_loss) < 2e-2, name
        assert torch.allclose(grad, ref_grad, atol=2e-2, rtol=0.1), name


def test_bf16_training_lowers_the_loss_and_reports_mfu(cache, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    last = train(config(cache, out, steps=40, dropout=0.0, dtype="bf16")).metrics
    curve = losses(out)
    assert len(curve) == 40 and curve[-1] < 0.6 * curve[0]
    assert all(v == v for v in curve)  # no NaN
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    name = torch.cuda.get_device_name(0)
    if any(known in name for known in ("H100", "H200", "A100")):
        assert 0 < last["mfu"] < 1, last
    assert lines[-1]["step"] == 40
