"""LlamaGen VQ import: checkpoints built from a reference LlamaGen VQModel written in this file from
the documented layout (its own module tree and key names, its L2-normalised quantizer, saved the
way LlamaGen's vq_train.py saves them) import exactly: equal tokens, and decodings equal to float
rounding (1e-10 in float64; 1e-4 in float32, through a deep random decoder). A
checkpoint that does not fit is one UserError naming the key, in LlamaGen's names."""

import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from halluscope.errors import UserError
from halluscope.tokenizers.config import VQGANConfig, config_from_dict, config_to_dict
from halluscope.tokenizers.llamagen_import import import_llamagen_vq
from halluscope.tokenizers.load import load_tokenizer
from halluscope.validate import ConfigError

N_CODES, CODE_DIM, CH = 64, 8, 32
# Small versions of the two released layouts: VQ-16 (five levels, 2 res blocks) and VQ-8 (four).
VQ16 = dict(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, image_size=64)
VQ8 = dict(ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=16, image_size=32)


# ----------------------------------------------------------------------------- reference LlamaGen VQ

def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


def conv3(c_in, c_out, stride=1, padding=1):
    return nn.Conv2d(c_in, c_out, 3, stride, padding)


class Res(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), conv3(c_in, c_out)
        self.norm2, self.conv2 = norm(c_out), conv3(c_out, c_out)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class Attn(nn.Module):  # single-head attention over the h*w positions, 1x1-conv projections
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, hw, C)
        out = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, -1) @ v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Down(nn.Module):  # stride-2 conv after padding one pixel right and bottom
    def __init__(self, c):
        super().__init__()
        self.conv = conv3(c, c, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = conv3(c, c)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level(c_in, c_out, n_res, attention, resample=None):
    """One conv_blocks entry: res.{j}, attn.{j} (deepest level only), downsample / upsample."""
    block = nn.Module()
    block.res = nn.ModuleList(Res(c_in if j == 0 else c_out, c_out) for j in range(n_res))
    block.attn = nn.ModuleList(Attn(c_out) for _ in range(n_res if attention else 0))
    if resample is not None:
        setattr(block, resample.__name__.lower() + "sample", resample(c_out))
    return block


def run_level(block, h):
    for j, res in enumerate(block.res):
        h = res(h)
        h = block.attn[j](h) if len(block.attn) else h
    return h


class RefEncoder(nn.Module):
    def __init__(self, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        widths, last = [CH * m for m in ch_mult], len(ch_mult) - 1
        self.conv_in = conv3(3, CH)
        self.conv_blocks = nn.ModuleList(
            level(([CH] + widths)[i], widths[i], num_res_blocks, i == last, Down if i < last else None)
            for i in range(len(ch_mult)))
        self.mid = nn.ModuleList([Res(widths[-1], widths[-1]), Attn(widths[-1]), Res(widths[-1], widths[-1])])
        self.norm_out, self.conv_out = norm(widths[-1]), conv3(widths[-1], z_channels)

    def forward(self, x):
        h = self.conv_in(x)
        for i, block in enumerate(self.conv_blocks):
            h = run_level(block, h)
            h = block.downsample(h) if hasattr(block, "downsample") else h
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class RefDecoder(nn.Module):
    def __init__(self, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        widths = [CH * m for m in ch_mult][::-1]  # conv_blocks[0] is the deepest level
        self.conv_in = conv3(z_channels, widths[0])
        self.mid = nn.ModuleList([Res(widths[0], widths[0]), Attn(widths[0]), Res(widths[0], widths[0])])
        self.conv_blocks = nn.ModuleList(
            level(([widths[0]] + widths)[i], widths[i], num_res_blocks + 1, i == 0, Up if i < len(widths) - 1 else None)
            for i in range(len(widths)))
        self.norm_out, self.conv_out = norm(widths[-1]), conv3(widths[-1], 3)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            h = run_level(block, h)
            h = block.upsample(h) if hasattr(block, "upsample") else h
        return self.conv_out(F.silu(self.norm_out(h)))


class RefVQ(nn.Module):
    """LlamaGen's VQModel: encoder, quant_conv, L2-normalised nearest code, post_quant_conv, decoder."""

    def __init__(self, ch_mult, num_res_blocks, z_channels, **_):
        super().__init__()
        self.encoder = RefEncoder(ch_mult, num_res_blocks, z_channels)
        self.decoder = RefDecoder(ch_mult, num_res_blocks, z_channels)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(N_CODES, CODE_DIM)
        self.quantize.register_buffer("codebook_used", torch.zeros(65536))  # training-only usage log
        self.quant_conv = nn.Conv2d(z_channels, CODE_DIM, 1)
        self.post_quant_conv = nn.Conv2d(CODE_DIM, z_channels, 1)

    def latents(self, x):
        return self.quant_conv(self.encoder(x))

    def encode(self, x):
        """Pixels in [-1, 1] -> tokens (B, h, w): the nearest unit code to the unit latent."""
        z = self.latents(x)
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, CODE_DIM), dim=1)
        codes = F.normalize(self.quantize.embedding.weight, dim=1)
        distance = (flat ** 2).sum(1, keepdim=True) + (codes ** 2).sum(1) - 2 * flat @ codes.T
        return distance.argmin(1).view(z.shape[0], *z.shape[2:])

    def decode(self, tokens):
        codes = F.normalize(self.quantize.embedding.weight, dim=1)
        return self.decoder(self.post_quant_conv(codes[tokens].permute(0, 3, 1, 2)))


def images(n, side, seed=1):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def ref_vq(layout, seed=0):
    """A random reference with trained-looking norms (so a swapped norm shows) and codes pointing
    at its own latents, with lengths far from 1 (so a codebook left unnormalised shows)."""
    torch.manual_seed(seed)
    ref = RefVQ(**layout).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        z = ref.latents(images(8, layout["image_size"], seed=7)).permute(0, 2, 3, 1).reshape(-1, CODE_DIM)
        lengths = torch.empty(N_CODES, 1).uniform_(0.2, 5.0)
        ref.quantize.embedding.weight.copy_(F.normalize(z[torch.randperm(len(z))[:N_CODES]], dim=1) * lengths)
    return ref


def save_llamagen(path, layout, ema=None, model=None, **args):
    """What vq_train.py saves: model (and ema) state dicts, discriminator, optimizers, steps, args."""
    defaults = dict(vq_model="VQ-16" if len(layout["ch_mult"]) == 5 else "VQ-8", codebook_size=N_CODES,
                    codebook_embed_dim=CODE_DIM, codebook_l2_norm=True, commit_loss_beta=0.25,
                    entropy_loss_ratio=0.0, dropout_p=0.0, image_size=layout["image_size"], ema=ema is not None)
    ckpt = {"model": model if model is not None else ema, "optimizer": {"state": {0: {"exp_avg": torch.randn(8)}},
                                                                       "param_groups": [{"lr": 1e-4}]},
            "discriminator": {"conv.weight": torch.randn(4, 3, 4, 4)}, "optimizer_disc": {"state": {}},
            "steps": 1000, "args": argparse.Namespace(**{**defaults, **args})}
    if ema is not None:
        ckpt["ema"] = ema
    torch.save({k: v for k, v in ckpt.items() if v is not None}, path)
    return path


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("layout, with_ema", [(VQ16, True), (VQ8, False)], ids=["vq16", "vq8"])
def test_imported_vq_matches_the_reference(tmp_path, layout, with_ema):
    ref = ref_vq(layout)
    other = ref_vq(layout, seed=1).state_dict()  # the non-EMA weights, which must not be the ones imported
    ckpt = save_llamagen(tmp_path / "vq.pt", layout, **({"ema": ref.state_dict(), "model": other} if with_ema
                                                         else {"model": ref.state_dict()}))
    import_llamagen_vq(ckpt, tmp_path / "vq")
    tok = load_tokenizer(tmp_path / "vq")
    side, levels = layout["image_size"], len(layout["ch_mult"])
    grid = side // 2 ** (levels - 1)
    c = tok.config
    assert (tok.kind, tok.grid, tok.vocab_size, tok.resolution) == ("image", (grid, grid), N_CODES, side)
    assert (c.quantizer, c.ch, c.ch_mult, c.num_res_blocks, c.attn_resolutions, c.embed_dim) == (
        "l2", CH, layout["ch_mult"], layout["num_res_blocks"], (grid,), CODE_DIM)
    with safe_open(str(tmp_path / "vq" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "codebook_used" in k]

    x = images(3, side)
    with torch.no_grad():
        tokens = ref.encode(x)
        assert tokens.unique().numel() > 8  # the comparison means something
        assert torch.equal(tok.encode(x), tokens)
        torch.testing.assert_close(tok.features(x), ref.latents(x), rtol=1e-5, atol=1e-5)
        decoded = tok.decode(tokens)
        assert decoded.shape == x.shape
        # float32 rounding, grown through ~30 layers of a random decoder (outputs up to ~3)
        torch.testing.assert_close(decoded, ref.decode(tokens), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok(x)[0], decoded, rtol=1e-4, atol=1e-4)  # forward's straight-through z_q
        # In float64 the two agree to 1e-10: the same computation, not a near one.
        tok, ref = tok.double(), ref.double()
        torch.testing.assert_close(tok.decode(tokens), ref.decode(tokens), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(tok.features(x.double()), ref.latents(x.double()), rtol=1e-10, atol=1e-10)


def test_resolution_flag_overrides_the_training_size_and_is_asked_for(tmp_path):
    ref = ref_vq(VQ8)
    ckpt = save_llamagen(tmp_path / "vq.pt", VQ8, model=ref.state_dict())
    tok = import_llamagen_vq(ckpt, tmp_path / "vq48", resolution=48)  # a convolutional VQ runs at any multiple of 8
    assert (tok.grid, tok.config.attn_resolutions) == ((6, 6), (6,))
    x = images(1, 48)
    with torch.no_grad():
        assert torch.equal(tok.encode(x), ref.encode(x))
    with pytest.raises(UserError, match="resolution 44 is not a multiple of the 8 pixels"):
        import_llamagen_vq(ckpt, tmp_path / "bad", resolution=44)
    bare = tmp_path / "bare.pt"
    torch.save(ref.state_dict(), bare)  # an FSDP-style bare state dict: no args
    with pytest.raises(UserError, match=r"does not record its image size \(args.image_size\); pass --resolution"):
        import_llamagen_vq(bare, tmp_path / "bad")
    assert import_llamagen_vq(bare, tmp_path / "bare", resolution=32).grid == (4, 4)
    assert not (tmp_path / "bad").exists()


def edit(sd, key, value=None):
    sd = dict(sd)
    if value is None:
        del sd[key]
    else:
        sd[key] = value
    return sd


@pytest.mark.parametrize("change, message", [
    (lambda sd: edit(sd, "decoder.conv_blocks.0.attn.1.q.weight"),
     "missing weight `decoder.conv_blocks.0.attn.1.q.weight`"),
    (lambda sd: edit(sd, "encoder.conv_blocks.1.attn.0.q.weight", torch.zeros(64, 64, 1, 1)),
     "unexpected weight `encoder.conv_blocks.1.attn.0.q.weight`"),
    (lambda sd: edit(sd, "decoder.mid.2.conv1.weight", torch.zeros(128, 128, 1, 1)),
     "weight `decoder.mid.2.conv1.weight` has shape (128, 128, 1, 1), expected (128, 128, 3, 3)"),
    (lambda sd: edit(sd, "quantize.embedding.weight"), "no LlamaGen VQ model (no `quantize.embedding.weight`)"),
])
def test_a_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path, change, message):
    ckpt = save_llamagen(tmp_path / "vq.pt", VQ8, model=change(ref_vq(VQ8).state_dict()))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        import_llamagen_vq(ckpt, tmp_path / "vq")
    assert "\n" not in str(e.value) and not (tmp_path / "vq").exists()


def test_args_that_contradict_the_weights_fail(tmp_path):
    ckpt = save_llamagen(tmp_path / "vq.pt", VQ8, model=ref_vq(VQ8).state_dict(), codebook_size=16384)
    with pytest.raises(UserError, match="its args say codebook_size 16384, its weights 64"):
        import_llamagen_vq(ckpt, tmp_path / "vq")


def test_l2_quantizer_is_a_checked_config_value():
    cfg = VQGANConfig(quantizer="l2")
    assert config_from_dict(config_to_dict(cfg)).quantizer == "l2"
    with pytest.raises(ConfigError, match="quantizer must be one of 'vq', 'gumbel', 'l2'"):
        VQGANConfig(quantizer="L2")
