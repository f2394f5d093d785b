"""Importing LlamaGen's class-conditional GPT: a reference LlamaGen GPT written here from the
documented layout (shared/reference/checkpoint-formats.md §4: fused wqkv, SwiGLU w1/w3/w2,
RMSNorm in float32, 2D RoPE as complex rotations with the class token's rows zero, sequence
[class] + tokens) is saved with random weights in LlamaGen's own checkpoint formats (DDP:
model / optimizer / steps / args Namespace; FSDP: a bare state dict), imported with the CLI,
and compared: logits, grid-token log-probabilities (exact: LlamaGen's vocabulary holds only
codes), cached against uncached decoding, and classifier-free guidance against its formula."""

import argparse
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from halluscope.cli import main
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.settings import SamplingSettings
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers.config import preset as tokenizer_preset

WIDTH, HEADS, LAYERS, CLASSES = 64, 4, 2, 10
IMAGE, DOWNSAMPLE = 64, 4  # a 16 x 16 grid: the tiny image tokenizer's
SIDE = IMAGE // DOWNSAMPLE


class RefRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 / torch.sqrt(x32.square().mean(-1, keepdim=True) + 1e-5)).type_as(x) * self.weight


def ref_rope_table(side, head_dim, base=10000.0):
    """(1 + side², head_dim / 2) complex rotations: the class slot 0, then row / column halves."""
    half = head_dim // 2
    theta = 1.0 / base ** (torch.arange(0, half, 2).float() / half)  # (half / 2,)
    rows, cols = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    angles = torch.cat([rows.flatten()[:, None] * theta, cols.flatten()[:, None] * theta], dim=1)
    return torch.cat([torch.zeros(1, half, dtype=torch.complex64), torch.polar(torch.ones_like(angles), angles)])


def ref_rope(x, table):
    """x (B, T, H, D): consecutive pairs as complex numbers, multiplied by the position's rotation."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table[None, :x.shape[1], None]).flatten(3).type_as(x)


class RefAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wqkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.wo = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x, table):
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, HEADS, -1) for z in self.wqkv(x).split(WIDTH, dim=-1))
        q, k = ref_rope(q, table), ref_rope(k, table)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return self.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, WIDTH))


class RefFeedForward(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.w1 = nn.Linear(WIDTH, hidden, bias=False)
        self.w3 = nn.Linear(WIDTH, hidden, bias=False)
        self.w2 = nn.Linear(hidden, WIDTH, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RefLayer(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.attention_norm, self.attention = RefRMSNorm(WIDTH), RefAttention()
        self.ffn_norm, self.feed_forward = RefRMSNorm(WIDTH), RefFeedForward(hidden)

    def forward(self, x, table):
        x = x + self.attention(self.attention_norm(x), table)
        return x + self.feed_forward(self.ffn_norm(x))


class RefLabelEmbedder(nn.Module):
    def __init__(self, rows):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, WIDTH)


class RefLlamaGen(nn.Module):
    def __init__(self, vocab, side=SIDE, classes=CLASSES, null_class=True, hidden=192):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, WIDTH)
        self.cls_embedding = RefLabelEmbedder(classes + null_class)
        self.layers = nn.ModuleList(RefLayer(hidden) for _ in range(LAYERS))
        self.norm = RefRMSNorm(WIDTH)
        self.output = nn.Linear(WIDTH, vocab, bias=False)
        self.table = ref_rope_table(side, WIDTH // HEADS)

    def forward(self, label, idx):
        """label (B,), idx (B, T) -> (B, 1 + T, V): position 0 (the class) predicts token 0."""
        h = torch.cat([self.cls_embedding.embedding_table(label)[:, None], self.tok_embeddings(idx)], dim=1)
        for layer in self.layers:
            h = layer(h, self.table)
        return self.output(self.norm(h)).float()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny image tokenizer folder with the 16 x 16 grid the GPT reads (the GPT route alone)."""
    folder = tmp_path_factory.mktemp("vq") / "vq"
    save_tokenizer(build_tokenizer(tokenizer_preset("image", "tiny")), folder)
    return folder


@pytest.fixture(scope="module")
def ref(tokenizer_dir):
    torch.manual_seed(0)
    from halluscope.tokenizers import load_tokenizer
    return RefLlamaGen(load_tokenizer(tokenizer_dir).vocab_size).eval()


def llamagen_args(**overrides):
    return argparse.Namespace(**{"gpt_model": "GPT-test", "image_size": IMAGE, "downsample_size": DOWNSAMPLE,
                                 "num_classes": CLASSES, "cls_token_num": 1, "class_dropout_prob": 0.1,
                                 "gpt_type": "c2i", **overrides})


def save_ddp(path, ref, **args):
    """LlamaGen's DDP training checkpoint: weights, optimizer state, step, args Namespace."""
    sd = ref.state_dict()
    torch.save({"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "steps": 100,
                "args": llamagen_args(**args)}, path)
    return path


def import_cli(tmp_path, ckpt, tokenizer_dir, *flags):
    out = tmp_path / "gpt"
    code = main(["import-llamagen", "--gpt", str(ckpt), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 *flags])
    return code, out


def tokens(vocab, n=2, length=SIDE * SIDE, seed=1):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_llamagen_gpt_imports_with_identical_logits_and_logprobs(tmp_path, ref, tokenizer_dir, layout, capsys):
    if layout == "ddp":
        ckpt, flags = save_ddp(tmp_path / "c2i.pt", ref), ["--n-head", str(HEADS)]
    else:  # FSDP: a bare state dict, no args: the grid is the tokenizer's, the head count a flag
        ckpt = tmp_path / "c2i.pt"
        torch.save(ref.state_dict(), ckpt)
        flags = ["--n-head", str(HEADS)]
    code, out = import_cli(tmp_path, ckpt, tokenizer_dir, *flags)
    assert code == 0, capsys.readouterr().err
    model = load_gpt(out)
    c = model.config
    assert (c.block, c.n_cond, c.cond_vocab_size, c.null_cond, c.grid) == ("llama", 1, CLASSES + 1, CLASSES,
                                                                           (SIDE, SIDE))
    x, label = tokens(c.vocab_size), torch.tensor([3, CLASSES])
    with torch.no_grad():
        expected = ref(label, x)[:, :-1]  # (2, 256, V): the prediction of every grid token
        assert torch.allclose(model(x[:, :-1], label[:, None]), expected, atol=1e-5)
    got = model.score(x, 0, label[:, None])["logprob"]  # every grid token, the first from the class alone
    assert torch.allclose(got, expected.log_softmax(-1).gather(-1, x[..., None])[..., 0], atol=1e-5)


def test_cached_decoding_equals_uncached_with_and_without_guidance(tmp_path, ref, tokenizer_dir):
    assert import_cli(tmp_path, save_ddp(tmp_path / "c2i.pt", ref), tokenizer_dir, "--n-head", str(HEADS))[0] == 0
    model = load_gpt(tmp_path / "gpt")
    prefix, cond = tokens(model.config.vocab_size, length=40), torch.tensor([[2], [7]])
    for settings in (SamplingSettings(top_k=20), SamplingSettings(temperature=0.8, cfg_scale=3.0)):
        runs = [model.generate(prefix, 30, 3, settings, torch.Generator().manual_seed(5), cond, use_cache=cached)
                for cached in (True, False)]
        assert torch.equal(runs[0][0], runs[1][0])
        assert torch.allclose(runs[0][1], runs[1][1], atol=1e-5)


def test_guidance_follows_its_formula_in_the_reference(tmp_path, ref, tokenizer_dir):
    """Greedy decoding under guidance s: the argmax of u + s (c - u), c the class's logits and u
    the null class's, both from the reference, one token at a time."""
    assert import_cli(tmp_path, save_ddp(tmp_path / "c2i.pt", ref), tokenizer_dir, "--n-head", str(HEADS))[0] == 0
    model = load_gpt(tmp_path / "gpt")
    prefix, label, scale = tokens(model.config.vocab_size, n=1, length=20), 4, 8.0
    got, _ = model.generate(prefix, 12, 1, SamplingSettings(top_k=1, cfg_scale=scale), cond=torch.tensor([[label]]))
    seq = prefix.clone()
    with torch.no_grad():
        for _ in range(12):
            c, u = ref(torch.tensor([label]), seq)[:, -1], ref(torch.tensor([CLASSES]), seq)[:, -1]
            seq = torch.cat([seq, (u + scale * (c - u)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq[:, 20:])
    plain, _ = model.generate(prefix, 12, 1, SamplingSettings(top_k=1), cond=torch.tensor([[label]]))
    assert not torch.equal(plain, got)  # guidance changed the choice: the test can tell


def test_sample_command_runs_an_imported_llamagen_with_guidance(tmp_path, ref, tokenizer_dir, capsys):
    from halluscope.data import write_png

    ckpt = save_ddp(tmp_path / "c2i.pt", ref)
    assert import_cli(tmp_path, ckpt, tokenizer_dir, "--n-head", str(HEADS))[0] == 0
    write_png(torch.rand(3, IMAGE, IMAGE) * 2 - 1, tmp_path / "photo.png")
    out = tmp_path / "samples"
    assert main(["sample", "--gpt", str(tmp_path / "gpt"), "--input", str(tmp_path / "photo.png"), "--samples", "2",
                 "--cond", "3", "--cfg-scale", "2", "--top-k", "50", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "samples.png").is_file() and '"cfg_scale": 2.0' in (out / "samples.json").read_text()


@pytest.mark.parametrize("change, flags, message", [
    ("none", [], "pass --n-head"),
    ("resolution", ["--n-head", str(HEADS), "--resolution", "128"], "--resolution 128 contradicts the tokenizer's 64"),
    ("gqa", ["--n-head", str(HEADS)], "grouped-query attention"),
    ("t2i", ["--n-head", str(HEADS)], "text-conditional"),
    ("wrong_grid", ["--n-head", str(HEADS)], "give a 32x32 grid; the tokenizer makes 16x16"),
    ("no_null", ["--n-head", str(HEADS)], None),
])
def test_import_mistakes_are_one_line_errors(tmp_path, ref, tokenizer_dir, capsys, change, flags, message):
    sd = dict(ref.state_dict())
    args = {"image_size": 2 * IMAGE} if change == "wrong_grid" else {}
    if change == "gqa":  # two key/value heads of four: fewer wqkv rows
        sd["layers.0.attention.wqkv.weight"] = torch.randn(WIDTH + 2 * WIDTH // 2, WIDTH)
    elif change == "t2i":
        sd["cls_embedding.cap_proj.fc1.weight"] = torch.randn(WIDTH, 16)
    elif change == "no_null":  # trained without class dropout: no null class row
        sd["cls_embedding.embedding_table.weight"] = sd["cls_embedding.embedding_table.weight"][:CLASSES]
    path = tmp_path / "c2i.pt"
    torch.save({"model": sd, "args": llamagen_args(**args)}, path)
    code, out = import_cli(tmp_path, path, tokenizer_dir, *flags)
    if message is None:  # imported, without guidance: asking for it is a clear error
        assert code == 0 and load_gpt(out).config.null_cond is None
        with pytest.raises(UserError, match="needs a GPT with a null condition"):
            load_gpt(out).generate(tokens(8, n=1, length=4), 2, settings=SamplingSettings(cfg_scale=2),
                                   cond=torch.tensor([[1]]))
        return
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_command_asks_for_what_it_needs(tmp_path, ref, capsys):
    ckpt = save_ddp(tmp_path / "c2i.pt", ref)
    for flags, message in [([], "give --vq"), (["--gpt", str(ckpt)], "--gpt needs its tokenizer")]:
        assert main(["import-llamagen", *flags, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


def test_vq_and_gpt_import_together_and_sample_from_another_folder(tmp_path, monkeypatch, capsys):
    """The whole route a LlamaGen user takes: both checkpoints in one command (the reference VQ of
    test_llamagen_vq.py), then `sample` with relative paths from elsewhere (the GPT finds its
    tokenizer through the path stored relative to its folder)."""
    from test_llamagen_vq import N_CODES, VQ8, images, ref_vq, save_llamagen

    vq = ref_vq(VQ8)
    save_llamagen(tmp_path / "vq.pt", VQ8, model=vq.state_dict())
    side = VQ8["image_size"] // 8
    torch.manual_seed(0)
    gpt = RefLlamaGen(N_CODES, side=side).eval()
    save_ddp(tmp_path / "c2i.pt", gpt, image_size=VQ8["image_size"], downsample_size=8)
    assert main(["import-llamagen", "--vq", str(tmp_path / "vq.pt"), "--gpt", str(tmp_path / "c2i.pt"),
                 "--n-head", str(HEADS), "--out", str(tmp_path / "models" / "llamagen")]) == 0, capsys.readouterr().err
    model = load_gpt(tmp_path / "models" / "llamagen")
    from halluscope.tokenizers import load_tokenizer
    tokenizer = load_tokenizer(tmp_path / "models" / "llamagen" / "tokenizer")
    x = images(2, VQ8["image_size"])
    with torch.no_grad():
        codes = vq.encode(x).flatten(1)
        assert torch.equal(tokenizer.encode(x).flatten(1), codes)
        label = torch.tensor([1, CLASSES])
        assert torch.allclose(model(codes[:, :-1], label[:, None]), gpt(label, codes)[:, :-1], atol=1e-5)

    assert main(["import-llamagen", "--vq", str(tmp_path / "vq.pt"), "--out", str(tmp_path / "vq-only")]) == 0
    with torch.no_grad():  # the tokenizer route alone writes the same tokenizer
        assert torch.equal(load_tokenizer(tmp_path / "vq-only").encode(x).flatten(1), codes)

    from halluscope.data import write_png
    write_png(x[0], tmp_path / "photo.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["sample", "--gpt", "../models/llamagen", "--input", "../photo.png", "--samples", "3", "--cond", "2",
                 "--cfg-scale", "1.5", "--out", "out", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert (elsewhere / "out" / "samples.png").is_file()

    from halluscope.data import ImageWorld, write_world
    write_world(ImageWorld(size=VQ8["image_size"]), elsewhere / "world", 2)
    assert main(["probe", "--gpt", "../models/llamagen", "--data", "world", "--context", "0.5", "--samples", "2",
                 "--cfg-scale", "1,2", "--cond", "3", "--out", "probe", "--no-report", "--device", "cpu"]) == 0
    from halluscope.io import read_jsonl
    records = read_jsonl(elsewhere / "probe" / "records.jsonl")
    assert {r["sampler"] for r in records} == {"llamagen T=1 cond=3", "llamagen T=1 cfg=2 cond=3"}
