"""Causal tokenizers (`train-tokenizer --causal`): with trained weights, the tokens and features of
a causal tokenizer's context (its first u token rows / latent frames) are bit-identical
whatever replaces the pixels after it, so encoding the visible part alone changes nothing;
a non-causal tokenizer's are not (the leak that causality removes). Plus the config, the
state-dict layout and the CLI."""

import dataclasses
import json

import pytest
import torch

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.errors import UserError
from halluscope.probes.context import context_leak, encode_context
from halluscope.tokenizers.config import VQGAN3DConfig, VQGANConfig, config_from_dict, config_to_dict
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.load import build_tokenizer, load_tokenizer, save_tokenizer

# The `tiny` presets shrunk to train in seconds, with every piece a causal encoder changes:
# two strided levels (the clip's second one strided in time only), attention blocks.
IMAGE = dict(resolution=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
             embed_dim=8, n_embed=32)
VIDEO = dict(resolution=16, frames=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, downsample=(4, 4, 4),
             patch=(1, 2, 2), mid_attention=True, z_channels=8, embed_dim=8, n_embed=32)
WORLDS = {"image": ImageWorld(size=16, seed=0), "video": VideoWorld(size=16, frames=16, seed=0)}
PADDING = {"image": "zeros", "video": "replicate"}  # one of each; untrained_causal covers the rest
STEPS = 50


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; on a CPU shared with other jobs several threads
    spin against each other (the fixture below, beside other jobs: 26 s on one thread, 227 s on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """(kind, causal) -> the run folder of a tokenizer trained for 50 steps by
    `halluscope train-tokenizer`; kind -> held-out examples of its world."""
    root = tmp_path_factory.mktemp("causal")
    out = {"root": root}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("halluscope.tokenizers.config.IMAGE_PRESETS", {"tiny": IMAGE})
        mp.setattr("halluscope.tokenizers.config.VIDEO_PRESETS", {"tiny": VIDEO})
        for kind, world in WORLDS.items():
            write_world(world, root / f"{kind}-train", 8)
            write_world(dataclasses.replace(world, seed=1), root / f"{kind}-held-out", 4)
            cfg = VQGANConfig(**IMAGE) if kind == "image" else VQGAN3DConfig(**VIDEO)
            out[kind] = torch.stack([x for _, x in open_dataset(root / f"{kind}-held-out", cfg).iter_valid()])
            for causal in (False, True):
                run = root / f"{kind}-{'causal' if causal else 'full'}"
                argv = ["train-tokenizer", "--kind", kind, "--data", str(root / f"{kind}-train"), "--out", str(run),
                        "--steps", str(STEPS), "--batch", "2", "--sample-every", str(STEPS), "--padding",
                        PADDING[kind], "--device", "cpu", *(["--causal"] if causal else [])]
                assert main(argv) == 0
                out[kind, causal] = run
    return out


def continuations(x: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
    """x with everything from pixel row (frame) `start` on replaced, three ways."""
    fills = {"noise": torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1,
             "another example's": x.roll(1, 0), "mid-grey": torch.zeros_like(x)}
    out = {}
    for name, fill in fills.items():
        out[name] = x.clone()
        out[name][:, :, start:] = fill[:, :, start:]
    return out


def visible_only(tok, x: torch.Tensor, u: int) -> torch.Tensor:
    """The probes' visible-only context (the shown pixels cut out and encoded alone) as a grid."""
    return encode_context(tok, x, u, "visible").view(len(x), u, *tok.grid[1:])


@pytest.mark.slow  # the shared fixture trains four tokenizers: 15 to 30 s
@pytest.mark.parametrize("kind", ["image", "video"])
def test_causal_context_ignores_the_continuation_bit_for_bit(trained, kind):
    tok, x = load_tokenizer(trained[kind, True] / "model"), trained[kind]
    assert tok.causal and tok.config.padding == PADDING[kind]
    rows = tok.grid[0]
    with torch.no_grad():
        tokens, features = tok.encode(x), tok.features(x)
        for u in range(1, rows):
            for name, y in continuations(x, u * x.shape[2] // rows).items():
                z = tok.features(y)
                assert torch.equal(z[:, :, :u], features[:, :, :u]), (u, name)
                assert torch.equal(tok.encode(y)[:, :u], tokens[:, :u]), (u, name)
                if name == "noise":  # the replacement does reach the rows after the context
                    assert not torch.equal(z[:, :, u], features[:, :, u])
            assert torch.equal(visible_only(tok, x, u), tokens[:, :u])  # full and visible agree
            for encoding in ("full", "visible"):  # the probes' leak figure is exactly 0 in both modes
                assert context_leak(tok, x, x.roll(1, 0), u, encoding).eq(0).all()


@pytest.mark.slow  # the shared fixture trains four tokenizers: 15 to 30 s
@pytest.mark.parametrize("kind", ["image", "video"])
def test_non_causal_context_leaks_the_continuation(trained, kind):
    """The negative case: the same replacements change a non-causal tokenizer's context."""
    tok, x = load_tokenizer(trained[kind, False] / "model"), trained[kind]
    assert not tok.causal
    rows = tok.grid[0]
    with torch.no_grad():
        tokens, features = tok.encode(x), tok.features(x)
        for u in range(1, rows):
            replaced = continuations(x, u * x.shape[2] // rows)
            assert all(not torch.equal(tok.features(y)[:, :, :u], features[:, :, :u]) for y in replaced.values()), u
            assert any(not torch.equal(tok.encode(y)[:, :u], tokens[:, :u]) for y in replaced.values()), u
            assert not torch.equal(visible_only(tok, x, u), tokens[:, :u]), u


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_untrained_causal_encoders_for_either_padding(kind, padding):
    """Causality is structural: it holds for any weights, and the layout of the parameters is
    the non-causal model's (taming's for images), so each model loads the other's weights."""
    base = VQGANConfig(**IMAGE, padding=padding) if kind == "image" else VQGAN3DConfig(**VIDEO, padding=padding)
    torch.manual_seed(0)
    full = build_tokenizer(base).eval()
    causal = build_tokenizer(dataclasses.replace(base, causal=True)).eval()
    causal.load_state_dict(full.state_dict())  # strict: same keys, same shapes
    shape = (2, 3, 16, 16) if kind == "image" else (2, 3, 16, 16, 16)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    rows = causal.grid[0]
    with torch.no_grad():
        for u in range(1, rows):
            y = continuations(x, u * x.shape[2] // rows)["noise"]
            assert torch.equal(causal.features(y)[:, :, :u], causal.features(x)[:, :, :u])
            assert not torch.equal(full.features(y)[:, :, :u], full.features(x)[:, :, :u])


@pytest.mark.parametrize("cls, params", [(VQGANConfig, IMAGE), (VQGAN3DConfig, VIDEO)])
def test_config_round_trip_default_and_validation(tmp_path, cls, params):
    cfg = cls(**params, causal=True)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    old = {k: v for k, v in config_to_dict(cfg).items() if k != "causal"}  # a config.json from before
    assert config_from_dict(old).causal is False and cls().causal is False
    with pytest.raises(UserError, match="causal must be true or false"):
        cls(**params, causal="yes")
    torch.manual_seed(0)
    tok = build_tokenizer(cfg).eval()
    save_tokenizer(tok, tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["causal"] is True
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.causal
    x = torch.rand(1, 3, *([16] if cls is VQGAN3DConfig else []), 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.features(x), tok.features(x))


def test_framewise_clips_are_causal_in_time():
    # each frame is encoded on its own, whatever the image VQGAN
    assert Framewise.wrap(build_tokenizer(VQGANConfig(**IMAGE)), frames=4).causal


@pytest.mark.slow  # the shared fixture trains four tokenizers: 15 to 30 s
@pytest.mark.parametrize("kind", ["image", "video"])
def test_cli_writes_causal_model_folders_and_resume_keeps_the_model(trained, kind, capsys):
    for causal in (False, True):
        run = trained[kind, causal]
        assert json.loads((run / "model" / "config.json").read_text())["causal"] is causal
        assert load_tokenizer(run / "model").causal is causal
    # asking a finished non-causal run to go on causally is refused, not ignored
    argv = ["train-tokenizer", "--kind", kind, "--data", str(trained["root"] / f"{kind}-train"), "--out",
            str(trained[kind, False]), "--steps", str(STEPS + 1), "--resume", "--causal"]
    assert main(argv) == 2
    assert "trained with causal=False" in capsys.readouterr().err
