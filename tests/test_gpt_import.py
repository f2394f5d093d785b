"""Importing minGPT-layout checkpoints: a reference minGPT (tests/ref_mingpt.py: separate key / query /
value layers, a causal mask buffer, masked softmax) must give the same logits as the imported
model, for every way such checkpoints are wrapped."""

import json

import pytest
import torch
from ref_mingpt import RefGPT

from halluscope.cli import main
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.mingpt import import_mingpt

VOCAB, WIDTH, HEADS, LAYERS, BLOCK = 29, 48, 4, 3, 40


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return RefGPT(VOCAB, BLOCK, LAYERS, HEADS, WIDTH).eval()


def save(path, obj):
    torch.save(obj, path)
    return path


def same_logits(model, ref, length=BLOCK):
    x = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(model(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("wrap", ["bare", "no_mask", "model_state_dict", "module"])
def test_mingpt_checkpoints_load_with_identical_logits(tmp_path, ref, wrap):
    sd = ref.state_dict()
    assert "blocks.0.attn.mask" in sd
    obj = {
        "bare": sd,
        "no_mask": {k: v for k, v in sd.items() if not k.endswith("attn.mask")},
        "model_state_dict": {"model_state_dict": sd, "epoch": 3},
        "module": {"model": {f"module.{k}": v for k, v in sd.items()}},  # saved from DistributedDataParallel
    }[wrap]
    model = import_mingpt(save(tmp_path / "gpt.pt", obj), n_layer=LAYERS, n_head=HEADS)
    c = model.config
    assert (c.vocab_size, c.n_embd, c.block_size, c.n_layer) == (VOCAB, WIDTH, BLOCK, LAYERS)
    assert same_logits(model, ref)


def test_block_size_can_keep_the_first_positions(tmp_path, ref):
    model = import_mingpt(save(tmp_path / "gpt.pt", ref.state_dict()), LAYERS, HEADS, block_size=16)
    assert model.config.block_size == 16 and same_logits(model, ref, length=16)
    with pytest.raises(UserError, match="exceeds the checkpoint's 40 grid positions"):
        import_mingpt(tmp_path / "gpt.pt", LAYERS, HEADS, block_size=41)


def test_import_gpt_command_writes_a_loadable_folder(tmp_path, ref, capsys):
    ckpt = save(tmp_path / "gpt.pt", ref.state_dict())
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "config.json").write_text("{}")
    out = tmp_path / "gpt"
    assert main(["import-gpt", "--ckpt", str(ckpt), "--format", "mingpt", "--n-layer", str(LAYERS),
                 "--n-head", str(HEADS), "--tokenizer", str(tmp_path / "vq"), "--grid", "5x8",
                 "--out", str(out)]) == 0
    assert "imported a GPT" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"] == "../vq" and config["grid"] == [5, 8]
    assert same_logits(load_gpt(out), ref)


@pytest.mark.parametrize("change, flags, message", [
    (None, ["--n-layer", "2", "--n-head", "4"], "--n-layer is 2, but the checkpoint has 3"),
    (None, ["--n-layer", "3", "--n-head", "5"], "does not divide the checkpoint's width n_embd=48"),
    ("open_mask", [], "not a causal"),
    ("extra_key", [], "does not know, e.g. blocks.0.attn.rotary"),
    ("no_head", [], "missing `head.weight`"),
    (None, ["--grid", "8x8"], "needs 63 positions"),
])
def test_import_mistakes_are_one_line_errors(tmp_path, ref, capsys, change, flags, message):
    sd = dict(ref.state_dict())
    if change == "open_mask":  # taming's n_unmasked: the first positions see each other
        sd["blocks.1.attn.mask"] = sd["blocks.1.attn.mask"].clone()
        sd["blocks.1.attn.mask"][..., :4, :4] = 1
    elif change == "extra_key":
        sd["blocks.0.attn.rotary"] = torch.zeros(3)
    elif change == "no_head":
        del sd["head.weight"]
    ckpt = save(tmp_path / "gpt.pt", sd)
    defaults = {"--n-layer": str(LAYERS), "--n-head": str(HEADS)}
    args = ["import-gpt", "--ckpt", str(ckpt), "--out", str(tmp_path / "gpt")]
    for flag, value in {**defaults, **dict(zip(flags[::2], flags[1::2]))}.items():
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "gpt").exists()


def test_a_file_without_a_mingpt_is_refused(tmp_path):
    with pytest.raises(UserError, match="no minGPT token embedding"):
        import_mingpt(save(tmp_path / "x.pt", {"encoder.weight": torch.zeros(2)}), 1, 1)


def net2net_checkpoint(path, ref, classes: int):
    """A taming Net2NetTransformer / TATS GPT as Lightning saves it: the GPT under
    `transformer.`, beside (junk) first-stage VQGAN weights, hyper-parameters with the start
    token."""
    sd = {**{f"transformer.{k}": v for k, v in ref.state_dict().items()},
          "first_stage_model.encoder.conv_in.weight": torch.randn(4, 3, 3, 3)}
    return save(path, {"state_dict": sd, "hyper_parameters": {"sos_token": 0, "class_cond_dim": classes}})


@pytest.mark.parametrize("classes", [0, 3])
def test_net2net_gpts_import_with_their_condition_at_position_0(tmp_path, ref, classes, capsys):
    """The peer reads [c, z + classes] and predicts z from position len(c) - 1 = 0 on: c is the
    start token 0 (unconditional) or the class id. Our import must give the same code logits,
    and an unconditional one takes its start token by default (sampling, scoring, probes)."""
    ckpt = net2net_checkpoint(tmp_path / "gpt.ckpt", ref, classes)
    assert main(["import-gpt", "--ckpt", str(ckpt), "--format", "mingpt", "--n-layer", str(LAYERS),
                 "--n-head", str(HEADS), "--out", str(tmp_path / "plain")]) == 2
    assert "--format net2net" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    out = tmp_path / "gpt"
    assert main(["import-gpt", "--ckpt", str(ckpt), "--format", "net2net", "--classes", str(classes),
                 "--n-layer", str(LAYERS), "--n-head", str(HEADS), "--out", str(out)]) == 0
    model = load_gpt(out).eval()
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_cond, c.cond_vocab_size) == (VOCAB - classes, BLOCK - 1, 1, max(classes, 1))
    z = torch.randint(0, VOCAB - classes, (2, BLOCK - 1), generator=torch.Generator().manual_seed(2))
    label = torch.tensor([[0], [max(classes - 1, 0)]])
    with torch.no_grad():
        theirs = ref(torch.cat([label, z + classes], 1))[..., classes:]  # (B, BLOCK, codes)
        ours = model(z, label)  # the condition's prediction of z_0, then one row after each z_i
        assert torch.allclose(ours, theirs, atol=1e-5)
        if classes == 0:  # the start token by default, and log-probabilities exact (nothing left out)
            logprob = model.score(z, 0)["logprob"]
            expected = theirs[:, :-1].log_softmax(-1).gather(-1, z[..., None])[..., 0]
            assert torch.allclose(logprob, expected, atol=1e-5)
            drawn, _ = model.generate(z[:, :5], 3, 2, generator=torch.Generator().manual_seed(0))
            assert drawn.shape == (4, 3)


def test_net2net_import_mistakes(tmp_path, ref, capsys):
    ckpt = net2net_checkpoint(tmp_path / "gpt.ckpt", ref, 0)
    base = ["import-gpt", "--ckpt", str(ckpt), "--format", "net2net", "--n-layer", str(LAYERS),
            "--n-head", str(HEADS), "--out", str(tmp_path / "gpt")]
    assert main(base + ["--classes", str(VOCAB)]) == 2
    assert f"--classes {VOCAB} must be in [0, {VOCAB})" in capsys.readouterr().err
    assert main(base + ["--block-size", str(BLOCK)]) == 2
    assert f"exceeds the checkpoint's {BLOCK - 1} grid positions" in capsys.readouterr().err
