"""`halluscope import-tats`: TATS checkpoints built here from a reference TATS written in this file
from the documented layout (plain torch modules under TATS's own key names, saved the way
Lightning saves them) import exactly: equal tokens, equal latents and decodings within float
tolerance, and GPT logits equal to the reference GPT's on TATS's [condition, codes] sequence.
Settings a checkpoint does not record are asked for by flag, and a wrong --downsample fails."""

import argparse
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from ref_mingpt import RefGPT

from halluscope.cli import main
from halluscope.gpt.checkpoint import load_gpt
from halluscope.probes.sample import continue_example, load_pair
from halluscope.tokenizers.load import load_tokenizer

N_HIDDENS, N_CODES, EMBEDDING_DIM, RESOLUTION = 16, 64, 16, 32
TRAINING_ONLY = ("image_discriminator.", "video_discriminator.", "perceptual_model.", "codebook.N", "codebook.z_avg")


# ----------------------------------------------------------------------------- reference TATS VQGAN

def same_pads(kernel, stride):
    """F.pad's list, last axis first: k - s per axis, the odd pixel in front."""
    pads = []
    for s in reversed(stride):
        total = kernel - s
        pads += [total - total // 2, total // 2]
    return pads


class RefConv(nn.Module):  # TATS's SamePadConv3d
    def __init__(self, c_in, c_out, kernel, stride=(1, 1, 1), mode="replicate"):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride)
        self.pads, self.mode = same_pads(kernel, stride), mode

    def forward(self, x):
        return self.conv(F.pad(x, self.pads, mode=self.mode))


class RefConvT(nn.Module):  # TATS's SamePadConvTranspose3d
    def __init__(self, c_in, c_out, kernel, stride):
        super().__init__()
        self.convt = nn.ConvTranspose3d(c_in, c_out, kernel, stride, padding=kernel - 1)
        self.pads = same_pads(kernel, stride)

    def forward(self, x):
        return self.convt(F.pad(x, self.pads, mode="replicate"))


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def ref_norm(channels, norm_type):
    return nn.GroupNorm(32, channels, eps=1e-6) if norm_type == "group" else nn.BatchNorm3d(channels)


class RefRes(nn.Module):  # always replicate-padded: TATS builds it without padding_type
    def __init__(self, c, norm_type):
        super().__init__()
        self.norm1, self.conv1 = ref_norm(c, norm_type), RefConv(c, c, 3)
        self.norm2, self.conv2 = ref_norm(c, norm_type), RefConv(c, c, 3)

    def forward(self, x):
        swish = Swish()
        return x + self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))


class RefVQGAN(nn.Module):
    """TATS's VQGAN with its discriminators and LPIPS reduced to stand-ins, pixels in [-0.5, 0.5]."""

    def __init__(self, downsample, norm_type, padding_type):
        super().__init__()
        n, halvings = N_HIDDENS, [int(math.log2(d)) for d in downsample]
        levels = max(halvings)
        strides = []
        for _ in range(levels):
            strides.append(tuple(2 if h > 0 else 1 for h in halvings))
            halvings = [h - 1 for h in halvings]
        top = n * 2 ** levels
        self.encoder = nn.Module()
        self.encoder.conv_first = RefConv(3, n, 3, mode=padding_type)
        self.encoder.conv_blocks = nn.ModuleList()
        for i, stride in enumerate(strides):
            block = nn.Module()
            block.down = RefConv(n * 2 ** i, n * 2 ** (i + 1), 4, stride, padding_type)
            block.res = RefRes(n * 2 ** (i + 1), norm_type)
            self.encoder.conv_blocks.append(block)
        self.encoder.final_block = nn.Sequential(ref_norm(top, norm_type), Swish())
        self.decoder = nn.Module()
        self.decoder.final_block = nn.Sequential(ref_norm(top, norm_type), Swish())
        self.decoder.conv_blocks = nn.ModuleList()
        for i, stride in enumerate(strides):
            block = nn.Module()
            c_out = n * 2 ** (levels - i)
            block.up = RefConvT(top if i == 0 else 2 * c_out, c_out, 4, stride)
            block.res1, block.res2 = RefRes(c_out, norm_type), RefRes(c_out, norm_type)
            self.decoder.conv_blocks.append(block)
        self.decoder.conv_last = RefConv(2 * n, 3, 3)
        self.pre_vq_conv = RefConv(top, EMBEDDING_DIM, 1, mode=padding_type)
        self.post_vq_conv = RefConv(EMBEDDING_DIM, top, 1)
        self.codebook = nn.Module()
        for name, shape in (("embeddings", (N_CODES, EMBEDDING_DIM)), ("N", (N_CODES,)),
                            ("z_avg", (N_CODES, EMBEDDING_DIM))):
            self.codebook.register_buffer(name, torch.randn(shape))
        self.image_discriminator = nn.Conv2d(3, 4, 4)  # training-only, as in a real checkpoint
        self.video_discriminator = nn.Conv3d(3, 4, 4)
        self.perceptual_model = nn.Module()
        self.perceptual_model.lin0 = nn.Conv2d(3, 1, 1)

    def encode(self, x):
        """TATS pixels -> (latents, nearest codes)."""
        h = self.encoder.conv_first(x)
        for block in self.encoder.conv_blocks:
            h = block.res(block.down(h))
        z = self.pre_vq_conv(self.encoder.final_block(h))
        flat = z.movedim(1, -1).reshape(-1, EMBEDDING_DIM)
        codes = self.codebook.embeddings
        distance = (flat ** 2).sum(1, keepdim=True) - 2 * flat @ codes.t() + (codes.t() ** 2).sum(0, keepdim=True)
        return z, distance.argmin(1).view(z.shape[0], *z.shape[2:])

    def decode(self, tokens):
        h = self.post_vq_conv(F.embedding(tokens, self.codebook.embeddings).movedim(-1, 1))
        h = self.decoder.final_block(h)
        for block in self.decoder.conv_blocks:
            h = block.res2(block.res1(block.up(h)))
        return self.decoder.conv_last(h)


def clip(frames, batch=2, seed=1):
    return torch.rand(batch, 3, frames, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def ref_vqgan(downsample, norm_type, padding_type, frames):
    """A random reference with trained-looking norms (BatchNorm running statistics away from
    0 and 1) and codes at its own latents, so that tokens vary and a misplaced stat shows."""
    torch.manual_seed(0)
    ref = RefVQGAN(downsample, norm_type, padding_type).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1234)
        z, _ = ref.encode(clip(frames, batch=4, seed=7) / 2)  # at least N_CODES latents
        flat = z.movedim(1, -1).reshape(-1, EMBEDDING_DIM)
        ref.codebook.embeddings.copy_(flat[torch.randperm(len(flat))[:N_CODES]])
    return ref


def save_lightning(path, state_dict, **args):
    """What a Lightning 1.5 checkpoint of TATS holds: hyper-parameters as a Namespace, an optimizer state."""
    torch.save({"state_dict": state_dict, "hyper_parameters": {"args": argparse.Namespace(**args)},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(8)}}, "param_groups": [{"lr": 3e-4}]}],
                "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.5.4"}, path)
    return path


def vqgan_args(downsample, norm_type, frames, **extra):
    return dict(embedding_dim=EMBEDDING_DIM, n_codes=N_CODES, n_hiddens=N_HIDDENS, downsample=list(downsample),
                image_channels=3, norm_type=norm_type, sequence_length=frames, sample_every_n_frames=1,
                resolution=RESOLUTION, no_random_restart=False, restart_thres=1.0, disc_channels=64, **extra)


# ----------------------------------------------------------------------------- the tokenizer

@pytest.mark.parametrize("norm_type, downsample, frames, padding", [
    ("batch", (4, 8, 8), 16, "replicate"),
    ("group", (2, 16, 16), 8, None),  # an old checkpoint without padding_type: TATS pads by replication
    ("group", (4, 8, 8), 8, "constant"),  # zeros in conv_first and the strided convs, replicate elsewhere
])
def test_imported_vqgan_matches_the_reference(tmp_path, capsys, norm_type, downsample, frames, padding):
    ref = ref_vqgan(downsample, norm_type, padding or "replicate", frames)
    args = vqgan_args(downsample, norm_type, frames, **({"padding_type": padding} if padding else {}))
    ckpt = save_lightning(tmp_path / "vqgan.ckpt", ref.state_dict(), **args)
    assert main(["import-tats", "--ckpt", str(ckpt), "--out", str(tmp_path / "vq")]) == 0
    assert "TATS VQGAN" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "vq")
    grid = (frames // downsample[0], RESOLUTION // downsample[1], RESOLUTION // downsample[2])
    assert (tok.kind, tok.grid, tok.vocab_size, tok.frames, tok.resolution) == ("video", grid, N_CODES, frames,
                                                                                  RESOLUTION)
    with safe_open(str(tmp_path / "vq" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith(TRAINING_ONLY)]

    x = clip(frames)
    with torch.no_grad():
        z, tokens = ref.encode(x / 2)  # halluscope's [-1, 1] is TATS's [-0.5, 0.5] doubled
        assert torch.equal(tok.encode(x), tokens)
        assert tokens.unique().numel() > 4  # the comparison means something
        torch.testing.assert_close(tok.features(x), z, rtol=1e-4, atol=1e-5)
        decoded = tok.decode(tokens)
        assert decoded.shape == x.shape
        torch.testing.assert_close(decoded, ref.decode(tokens) * 2, rtol=1e-4, atol=1e-4)  # float32 rounding


def test_a_wrong_or_missing_downsample_fails(tmp_path, capsys):
    ref = ref_vqgan((4, 8, 8), "batch", "replicate", 8)
    args = vqgan_args((4, 8, 8), "batch", 8)
    ckpt = save_lightning(tmp_path / "vqgan.ckpt", ref.state_dict(), **args)
    out = tmp_path / "vq"
    assert main(["import-tats", "--ckpt", str(ckpt), "--downsample", "2,16,16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--downsample (2, 16, 16) contradicts the checkpoint's downsample (4, 8, 8)" in err
    assert err.count("\n") == 1 and not out.exists()

    del args["downsample"], args["resolution"]  # a checkpoint without them: asked for by flag, one at a time
    ckpt = save_lightning(tmp_path / "bare.ckpt", ref.state_dict(), **args)
    base = ["import-tats", "--ckpt", str(ckpt), "--out", str(out)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "does not record `downsample`" in err and "pass --downsample T,H,W" in err and err.count("\n") == 1
    assert main(base + ["--downsample", "4,4,4", "--resolution", str(RESOLUTION)]) == 2  # 2 levels; the weights have 3
    assert "means 2 strided levels, but the encoder" in capsys.readouterr().err
    assert main(base + ["--downsample", "4,8,8"]) == 2
    assert "pass --resolution" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--downsample", "4,8,8", "--resolution", str(RESOLUTION)]) == 0
    assert load_tokenizer(out).grid == (2, 4, 4)


# ----------------------------------------------------------------------------- the GPT

FRAMES, DOWNSAMPLE, GRID = 16, (4, 8, 8), (4, 4, 4)


@pytest.fixture(scope="module")
def vqgan():
    return ref_vqgan(DOWNSAMPLE, "batch", "replicate", FRAMES)


def tats_gpt_checkpoint(path, vqgan, classes, **overrides):
    """A TATS Net2NetTransformer checkpoint: the GPT under transformer., its whole VQGAN (with the
    training-only parts) under first_stage_model., the GPT's args (which hold no downsample)."""
    torch.manual_seed(classes)
    gpt = RefGPT(N_CODES + classes, math.prod(GRID)).eval()
    sd = {**{f"transformer.{k}": v for k, v in gpt.state_dict().items()},
          **{f"first_stage_model.{k}": v for k, v in vqgan.state_dict().items()}}
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=math.prod(GRID), n_unmasked=0, vtokens=False,
                vtokens_pos=False, unconditional=classes == 0, class_cond_dim=classes or None, cond_stage_key="label",
                sequence_length=FRAMES, resolution=RESOLUTION, sample_every_n_frames=1, sample_every_n_latent_frames=0,
                vocab_size=16384, vqvae="vqgan.ckpt")
    return save_lightning(path, sd, **{**args, **overrides}), gpt


@pytest.mark.parametrize("classes", [0, 5])
def test_imported_gpt_gives_the_reference_logits(tmp_path, vqgan, classes, capsys):
    ckpt, ref = tats_gpt_checkpoint(tmp_path / "gpt.ckpt", vqgan, classes)
    out = tmp_path / "gpt"
    command = ["import-tats", "--gpt-ckpt", str(ckpt), "--out", str(out)]
    if classes:  # the tokenizer imported on its own first, then named
        vq = save_lightning(tmp_path / "vqgan.ckpt", vqgan.state_dict(), **vqgan_args(DOWNSAMPLE, "batch", FRAMES))
        assert main(["import-tats", "--ckpt", str(vq), "--out", str(tmp_path / "vq")]) == 0
        command += ["--tokenizer", str(tmp_path / "vq")]
    else:  # the VQGAN inside the GPT checkpoint, whose args do not say its downsample
        command += ["--downsample", "4,8,8"]
    assert main(command) == 0
    assert "TATS GPT" in capsys.readouterr().out
    gpt = load_gpt(out)
    tok = load_tokenizer(gpt.config.tokenizer)
    c = gpt.config
    assert (c.vocab_size, c.grid, c.n_cond, c.cond_vocab_size) == (N_CODES, GRID, 1, max(classes, 1))

    x = clip(FRAMES)
    label = torch.tensor([[0], [max(classes - 1, 0)]])  # TATS's start token 0, or class ids
    with torch.no_grad():
        _, z = vqgan.encode(x / 2)
        z = z.flatten(1)
        assert torch.equal(tok.encode(x).flatten(1), z)
        # TATS: logits = transformer([c, z + classes][:, :-1])[:, len(c) - 1:], over the code ids
        theirs = ref(torch.cat([label, z + classes], 1)[:, :-1])[..., classes:]
        torch.testing.assert_close(gpt(z[:, :-1], label), theirs, rtol=1e-5, atol=1e-5)


def test_imported_pair_continues_a_clip(tmp_path, vqgan):
    """End to end: the imported pair draws continuations from context tokens of the shown frames alone."""
    ckpt, _ = tats_gpt_checkpoint(tmp_path / "gpt.ckpt", vqgan, 0)
    assert main(["import-tats", "--gpt-ckpt", str(ckpt), "--downsample", "4,8,8", "--out", str(tmp_path / "gpt")]) == 0
    gpt, tok = load_pair(tmp_path / "gpt", device="cpu")
    x = clip(FRAMES, batch=1)[0]
    result = continue_example(gpt, tok, x, 0.5, 2, generator=torch.Generator().manual_seed(0))
    assert result.context_tokens == 2 * 16 and result.tokens.shape == (2, *GRID)
    assert torch.equal(result.tokens[:, :2].flatten(1), tok.encode(x[None, :, :8]).flatten(1).expand(2, -1))
    assert result.samples.shape == (2, *x.shape) and torch.isfinite(result.samples).all()


@pytest.mark.parametrize("flags, overrides, message", [
    ([], {}, "pass --downsample T,H,W"),
    # Both have 3 levels like (4, 8, 8): the weights cannot tell, the GPT's positions can.
    (["--downsample", "2,8,8"], {}, "token grid 8x4x4 needs 127 positions; the model has 63"),
    (["--downsample", "8,8,8"], {}, "the 2x4x4 token grid fills 32"),
    (["--downsample", "4,8,8", "--classes", "3"], {}, "--classes 3 contradicts the checkpoint's classes 0"),
    (["--downsample", "4,8,8"], {"n_head": None}, "pass --n-head"),
    (["--downsample", "4,8,8"], {"cond_stage_key": "stft", "unconditional": False}, "conditioned on `stft`"),
])
def test_gpt_import_mistakes_are_one_line_errors(tmp_path, vqgan, capsys, flags, overrides, message):
    ckpt, _ = tats_gpt_checkpoint(tmp_path / "gpt.ckpt", vqgan, 0, **overrides)
    assert main(["import-tats", "--gpt-ckpt", str(ckpt), "--out", str(tmp_path / "gpt"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "gpt").exists()
