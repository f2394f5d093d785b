"""The Tokenizer contract for every kind (image VQGAN, framewise clips, 3D clip VQGAN): shapes,
grid arithmetic, save/load round trips, and the codebook health tracker."""

import json

import pytest
import torch

from halluscope.errors import UserError
from halluscope.tokenizers.codebook import CodebookTracker
from halluscope.tokenizers.config import FramewiseConfig, VQGAN3DConfig, VQGANConfig, preset
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.load import build_tokenizer, load_tokenizer, save_tokenizer

SMALL_IMAGE = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 2), z_channels=8, embed_dim=8, n_embed=32)
CONFIGS = {
    "vqgan": SMALL_IMAGE,
    "framewise": FramewiseConfig(image=SMALL_IMAGE, frames=4),
    "vqgan3d": VQGAN3DConfig(resolution=32, frames=4, ch=8, ch_mult=(1, 2), downsample=(2, 4, 4), patch=(1, 2, 2),
                             z_channels=8, embed_dim=8, n_embed=32),
}


def pixels(tok, batch=2, seed=0):
    shape = (batch, 3, tok.resolution, tok.resolution) if tok.kind == "image" else \
        (batch, 3, tok.frames, tok.resolution, tok.resolution)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("arch", CONFIGS)
def test_contract_shapes_and_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    tok = build_tokenizer(CONFIGS[arch]).eval()
    x = pixels(tok)
    with torch.no_grad():
        tokens = tok.encode(x)
        assert tokens.dtype == torch.long and tokens.shape == (2, *tok.grid)
        assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.vocab_size
        out = tok.decode(tokens)
        assert out.shape == x.shape
        assert tok.features(x).shape == (2, 8, *tok.grid)

    save_tokenizer(tok, tmp_path / arch)
    assert json.loads((tmp_path / arch / "config.json").read_text())["kind"] == tok.kind
    loaded = load_tokenizer(tmp_path / arch)
    assert (loaded.kind, loaded.grid, loaded.vocab_size, loaded.resolution, loaded.frames) == \
        (tok.kind, tok.grid, tok.vocab_size, tok.resolution, tok.frames)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), tokens)
        assert torch.equal(loaded.decode(tokens), out)


def test_vqgan_state_dict_has_taming_vqmodel_layout():
    keys = build_tokenizer(SMALL_IMAGE).state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"}
    assert "quantize.embedding.weight" in keys and "decoder.conv_out.weight" in keys


def test_replicate_padding_gives_a_flat_picture_one_code_and_keeps_the_state_dict():
    """With zero padding a blank image reaches the quantizer as different latents near the
    borders (many codes); with replicate padding it is one code, and the parameters keep taming's names."""
    torch.manual_seed(0)
    zeros = build_tokenizer(VQGANConfig(**{**vars(SMALL_IMAGE), "resolution": 64, "ch_mult": (1, 1, 2)})).eval()
    replicate = build_tokenizer(VQGANConfig(**{**vars(zeros.config), "padding": "replicate"})).eval()
    replicate.load_state_dict(zeros.state_dict())  # same keys and shapes, strict
    blank = torch.full((1, 3, 64, 64), -0.8)
    clip = build_tokenizer(VQGAN3DConfig(**{**vars(CONFIGS["vqgan3d"]), "padding": "replicate"})).eval()
    with torch.no_grad():
        assert zeros.encode(blank).unique().numel() > 1
        assert replicate.encode(blank).unique().numel() == 1
        assert clip.encode(torch.full((1, 3, 4, 32, 32), 0.3)).unique().numel() == 1  # also across latent frames
    assert preset("image", "tiny").padding == VQGANConfig().padding == "zeros"  # taming's, and the fastest
    for cls in (VQGANConfig, VQGAN3DConfig):
        with pytest.raises(UserError, match="padding must be"):
            cls(padding="reflect")


def test_vqgan3d_grid_arithmetic():
    # 16 frames at 128² with (4, 8, 8) and four levels: a 4×16×16 grid.
    cfg = VQGAN3DConfig(resolution=128, frames=16, ch_mult=(1, 2, 2, 4), downsample=(4, 8, 8))
    assert cfg.grid == (4, 16, 16)
    assert cfg.level_strides() == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert VQGAN3DConfig(resolution=128, frames=16, ch_mult=(1, 2, 2, 4), downsample=(2, 8, 8)).grid == (8, 16, 16)
    # the patch folds part of the downsampling into channels
    cfg = VQGAN3DConfig(resolution=64, frames=16, ch_mult=(1, 2, 2), downsample=(4, 4, 4), patch=(1, 2, 2))
    assert cfg.grid == (4, 16, 16) and cfg.level_strides() == [(2, 2, 2), (2, 1, 1)]
    with torch.no_grad():
        small = VQGAN3DConfig(resolution=32, frames=8, ch=8, ch_mult=(1, 1, 2), downsample=(4, 8, 8), patch=(1, 2, 2),
                              z_channels=4, embed_dim=4, n_embed=16)
        tok = build_tokenizer(small)
        x = torch.zeros(1, 3, 8, 32, 32)
        assert tok.encode(x).shape == (1, 2, 4, 4) and tok.decode(tok.encode(x)).shape == x.shape


def test_vqgan3d_rejects_impossible_downsampling():
    with pytest.raises(UserError, match="power of two"):
        VQGAN3DConfig(ch_mult=(1, 2), downsample=(4, 8, 8))  # one level can halve once
    with pytest.raises(UserError, match="power of two"):
        VQGAN3DConfig(downsample=(3, 4, 4))


def test_framewise_tokens_are_the_image_tokens_of_each_frame():
    torch.manual_seed(0)
    image = build_tokenizer(SMALL_IMAGE).eval()
    clip_tok = Framewise.wrap(image, frames=4)
    x = pixels(clip_tok)
    with torch.no_grad():
        tokens = clip_tok.encode(x)
        assert tokens.shape == (2, 4, 16, 16)
        assert torch.equal(tokens[:, 2], image.encode(x[:, :, 2]))
        assert torch.equal(clip_tok.decode(tokens)[:, :, 1], image.decode(tokens[:, 1]))


def test_presets_give_the_documented_grids():
    assert preset("image", "tiny").grid == (16, 16)
    assert preset("video", "tiny").grid == (4, 16, 16)
    assert preset("video", "small").grid == (4, 16, 16)  # 16 frames at 128² with (4, 8, 8)
    assert preset("image", "base").grid == (16, 16)
    with pytest.raises(UserError, match="unknown image preset"):
        preset("image", "huge")


def test_bad_config_is_a_clear_error(tmp_path):
    save_tokenizer(build_tokenizer(SMALL_IMAGE), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "arch": "nope"}))
    with pytest.raises(UserError, match="arch 'nope'"):
        load_tokenizer(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "n_embed": 64}))
    with pytest.raises(UserError, match=r"`quantize.embedding.weight` has shape \(32, 8\), expected \(64, 8\)"):
        load_tokenizer(tmp_path / "m")


def test_codebook_tracker_usage_perplexity_and_restart():
    tracker = CodebookTracker(n_codes=8, dim=2, window=4, keep=16)
    for step in range(4):
        tokens = torch.tensor([[0, 1], [0, 1]])  # two codes, equally often
        tracker.update(tokens, torch.arange(8.0).view(2, 2, 2) + 100 * step)  # latents (B, D, 2)
    assert tracker.usage() == pytest.approx(2 / 8)
    assert tracker.perplexity() == pytest.approx(2.0)
    codebook = torch.zeros(8, 2)
    restarted = tracker.restart_dead(codebook, None, torch.Generator().manual_seed(0))
    assert restarted == 6
    assert torch.equal(codebook[:2], torch.zeros(2, 2))  # live codes untouched
    recent = {tuple(row) for row in tracker.latents.tolist()}
    moved = [tuple(row) for row in codebook[2:].tolist()]
    assert set(moved) <= recent and len(set(moved)) == 6  # dead codes sit on distinct recent latents
    # a restarted code gets a full window before it can be called dead again
    assert tracker.restart_dead(codebook, None, torch.Generator().manual_seed(0)) == 0
    state = tracker.state_dict()
    other = CodebookTracker(8, 2, window=4, keep=16)
    other.load_state_dict(state)
    assert other.usage() == tracker.usage() and torch.equal(other.latents, tracker.latents)
