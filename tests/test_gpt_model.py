"""The GPT itself: presets, causality, position embeddings, initialisation, conditioning,
and the model folder round trip."""

import json
import math

import pytest
import torch

from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt, save_gpt
from halluscope.gpt.config import GPTConfig, preset
from halluscope.gpt.model import GPT


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("tiny", **{"vocab_size": 37, "block_size": 48, **overrides})).eval()


@pytest.mark.parametrize("name, published", [("110m", 110e6), ("336m", 336e6), ("730m", 730e6), ("1.5b", 1.5e9)])
def test_published_presets_have_their_sizes(name, published):
    with torch.device("meta"):  # counts parameters without allocating them
        model = GPT(preset(name, vocab_size=16384, block_size=1024))
    assert abs(model.num_params() - published) / published < 0.05


def test_num_params_counts_every_weight():
    model = tiny()
    c = model.config
    per_block = 12 * c.n_embd**2 + 13 * c.n_embd  # qkv + proj + mlp weights, their biases, 2 LayerNorms
    expected = c.n_layer * per_block + 2 * c.vocab_size * c.n_embd + c.block_size * c.n_embd + 2 * c.n_embd
    assert model.num_params() == expected


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="not divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(UserError, match="unknown GPT preset"):
        preset("huge")
    with pytest.raises(UserError, match="unknown keys: colour"):
        GPTConfig.from_dict({"colour": "red"})


def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny()
    x = torch.randint(0, 37, (2, 40))
    for j in (1, 17, 39):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 37
        a, b = model(x), model(y)
        assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6)
        assert not torch.allclose(a[:, j:], b[:, j:], atol=1e-3)  # the change is visible from j on


def test_factorized_positions_sum_one_table_per_axis():
    model = tiny(grid=(2, 3, 4), block_size=24, factorized_pos=True)
    t, h, w = model.pos_emb
    expected = torch.stack([t[p // 12] + h[(p // 4) % 3] + w[p % 4] for p in range(24)])
    assert torch.equal(model.position_embedding(0, 24), expected)
    assert torch.equal(model.position_embedding(13, 1), expected[13:14])
    with pytest.raises(UserError, match="exceeds"):
        preset("tiny", grid=(2, 3), block_size=7, factorized_pos=True)


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=128))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[3].attn.qkv.bias.abs().max() == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    x = torch.randint(0, 37, (2, 16))
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_conditional_model_reads_its_condition_first():
    model = tiny(n_cond=1, cond_vocab_size=10)
    x = torch.randint(0, 37, (2, 8))
    cond = torch.tensor([[3], [7]])
    logits = model(x, cond)
    assert logits.shape == (2, 9, 37)  # one extra row: the condition predicts x[:, 0]
    other = model(x, torch.tensor([[4], [7]]))
    assert not torch.allclose(logits[0], other[0]) and torch.allclose(logits[1], other[1], atol=1e-6)
    with pytest.raises(ValueError, match="cond"):
        model(x)
    tokens, logprobs = model.generate(torch.empty(1, 0, dtype=torch.long), 5, 3, cond=cond[:1])
    assert tokens.shape == logprobs.shape == (3, 5)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    tok = tmp_path / "models" / "vq"
    tok.mkdir(parents=True)
    model = tiny(grid=(6, 8), tokenizer=str(tok))
    save_gpt(model, tmp_path / "models" / "gpt")
    config = json.loads((tmp_path / "models" / "gpt" / "config.json").read_text())
    assert config["kind"] == "gpt" and config["tokenizer"] == "../vq" and config["grid"] == [6, 8]
    loaded = load_gpt(tmp_path / "models" / "gpt")
    assert loaded.config.grid == (6, 8) and loaded.config.tokenizer == str(tok)
    x = torch.randint(0, 37, (2, 48))
    assert torch.equal(model(x), loaded(x))


def test_load_gpt_errors_are_one_line(tmp_path):
    model = tiny()
    save_gpt(model, tmp_path / "gpt")
    cfg_path = tmp_path / "gpt" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(UserError, match="do not fit the GPT config"):
        load_gpt(tmp_path / "gpt")
    cfg_path.write_text(json.dumps({**cfg, "kind": "image"}))
    with pytest.raises(UserError, match="not a GPT"):
        load_gpt(tmp_path / "gpt")
