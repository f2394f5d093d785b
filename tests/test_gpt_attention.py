"""Attention backends agree with each other, and a broken or missing xformers falls back to
SDPA with exactly one warning."""

import sys
import types
import warnings

import pytest
import torch

from halluscope.gpt import attention
from halluscope.gpt.attention import attend, resolve_backend, xformers_problem
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT


@pytest.fixture
def fresh_fallback(monkeypatch):
    """A process that has not warned yet, with no remembered xformers check either side."""
    monkeypatch.setattr(attention, "_fallback_warned", False)
    xformers_problem.cache_clear()
    yield
    xformers_problem.cache_clear()


def logits_per_backend(backends, dtype, device="cpu"):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=37, block_size=48)).to(device, dtype).eval()
    x = torch.randint(0, 37, (3, 48), device=device)
    out = {}
    for name in backends:
        model.set_attention(name)
        with torch.no_grad():
            out[name] = model(x).float()
    return out


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_math_and_sdpa_give_the_same_logits(dtype, atol):
    out = logits_per_backend(["math", "sdpa"], dtype)
    assert torch.allclose(out["math"], out["sdpa"], atol=atol)


@pytest.mark.parametrize("causal", [True, False])
def test_attend_backends_agree_on_raw_tensors(causal):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 1 if not causal else 9, 16)
    k, v = torch.randn(2, 2, 4, 9, 16).unbind(0)
    assert torch.allclose(attend(q, k, v, causal, "math"), attend(q, k, v, causal, "sdpa"), atol=1e-6)


@pytest.mark.gpu
def test_xformers_matches_sdpa_and_math_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the xformers backend runs only on CUDA tensors")
    problem = xformers_problem("cuda")
    if problem:
        pytest.skip(problem)
    out = logits_per_backend(["math", "sdpa", "xformers"], torch.float16, device="cuda")
    assert torch.allclose(out["xformers"], out["math"], atol=2e-2)
    assert torch.allclose(out["xformers"], out["sdpa"], atol=2e-2)


def test_auto_falls_back_to_sdpa_with_one_warning_when_kernels_do_not_load(fresh_fallback, monkeypatch):
    problem = "xformers kernels do not load (built for torch 2.10)"
    monkeypatch.setattr(attention, "xformers_problem", lambda device_type: problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = [resolve_backend("auto", torch.device("cuda")) for _ in range(3)]
        chosen.append(resolve_backend("xformers", torch.device("cuda")))
    assert chosen == ["sdpa"] * 4
    assert len(caught) == 1 and "kernels do not load" in str(caught[0].message)


def test_requesting_xformers_on_cpu_runs_sdpa_and_warns_once(fresh_fallback):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=37, block_size=48, attention="xformers")).eval()
    x = torch.randint(0, 37, (2, 20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = model(x), model(x)  # 2 layers x 2 calls, one warning in all
    assert len(caught) == 1 and "needs CUDA" in str(caught[0].message)
    model.set_attention("sdpa")
    assert torch.equal(first, model(x)) and torch.equal(second, first)


def test_xformers_check_sees_missing_and_broken_installs(fresh_fallback, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # import xformers raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    assert "not installed" in xformers_problem("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", torch.device("cuda")) == "sdpa"
    assert caught == []  # without xformers, auto choosing SDPA is the ordinary case

    xformers_problem.cache_clear()
    ops = types.ModuleType("xformers.ops")
    ops.LowerTriangularMask = object

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    ops.memory_efficient_attention = no_kernel
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    # Importable, but the probe call fails (here the fake kernel, or no CUDA at all).
    assert xformers_problem("cuda").startswith("xformers kernels do not load")


def test_auto_on_cpu_is_sdpa_without_a_warning(fresh_fallback):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert caught == []
