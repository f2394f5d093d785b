"""`halluscope train-tokenizer`: the loop writes what it promises (metrics, samples, model,
checkpoint), resumes exactly, and runs the GAN and perceptual paths; plus the loss pieces."""

import json
from pathlib import Path

import pytest
import torch

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.errors import UserError
from halluscope.tokenizers.load import load_tokenizer
from halluscope.tokenizers.losses import TokenizerLoss, psnr
from halluscope.tokenizers.perceptual import Perceptual
from halluscope.tokenizers.train import STATE_NAME, TrainConfig, batch_indices, train

TINY_IMAGE = dict(resolution=32, ch=32, ch_mult=(1, 2), z_channels=8, embed_dim=8, n_embed=32)
TINY_VIDEO = dict(resolution=16, frames=4, ch=8, ch_mult=(1, 2), downsample=(2, 4, 4), patch=(1, 2, 2),
                  z_channels=8, embed_dim=8, n_embed=32)


def write_images(folder: Path, n: int) -> Path:
    write_world(ImageWorld(size=32, seed=0), folder, n)
    return folder


def write_clips(folder: Path, n: int) -> Path:
    write_world(VideoWorld(size=16, frames=4, seed=0), folder, n)
    return folder


def config(tmp_path, data, out, **kw) -> TrainConfig:
    base = dict(kind="image", data=str(data), out=str(tmp_path / out), steps=4, batch=2, ckpt_every=2, sample_every=2,
                usage_window=2, restart_every=2, progress=False, extra=TINY_IMAGE)
    return TrainConfig(**{**base, **kw})


def final_weights(run: Path) -> dict:
    return torch.load(run / STATE_NAME, weights_only=True)["model"]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    data = write_images(tmp_path / "images", 6)
    straight = train(config(tmp_path, data, "a"))
    half = train(config(tmp_path, data, "b", steps=2))
    assert half["step"] == 2
    resumed = train(config(tmp_path, data, "b", resume=True))
    assert straight["step"] == resumed["step"] == 4
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["loss"] == resumed["loss"]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_cli_run_writes_model_metrics_samples_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    data = write_images(tmp_path / "images", 4)
    args = ["train-tokenizer", "--kind", "image", "--data", str(data), "--out", str(tmp_path / "run"),
            "--resolution", "32", "--steps", "2", "--batch", "2", "--sample-every", "1", "--ckpt-every", "2"]
    monkeypatch.setattr("halluscope.tokenizers.config.IMAGE_PRESETS", {"tiny": TINY_IMAGE})
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "perceptual loss off" in out
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"loss", "l1", "codebook", "psnr", "usage", "perplexity"} <= metrics[-1].keys()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000001.png", "step_000002.png"]
    tok = load_tokenizer(run / "model")
    assert tok.grid == (16, 16) and tok.vocab_size == 32
    assert main(args) == 2  # an existing run is not overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_gan_and_clip_training_paths(tmp_path):
    data = write_images(tmp_path / "images", 4)
    last = train(config(tmp_path, data, "gan", steps=2, gan_start=1))
    assert {"g_loss", "d_weight", "d_loss"} <= last.keys() and last["d_weight"] >= 0
    assert "disc" in torch.load(tmp_path / "gan" / STATE_NAME, weights_only=True)

    clips = write_clips(tmp_path / "clips", 3)
    last = train(config(tmp_path, clips, "clip", kind="video", steps=2, gan_start=0, extra=TINY_VIDEO))
    assert last["step"] == 2 and "d_loss" in last
    assert (tmp_path / "clip" / "samples" / "step_000002.gif").is_file()
    assert load_tokenizer(tmp_path / "clip" / "model").grid == (2, 4, 4)


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    def epoch(seed, first_step):
        return [i for step in range(first_step, first_step + 5) for i in batch_indices(10, 2, step, seed)]

    assert sorted(epoch(1, 0)) == sorted(epoch(1, 5)) == list(range(10))
    assert epoch(1, 0) != epoch(1, 5)  # each epoch its own order
    assert epoch(1, 0) == epoch(1, 0) and epoch(1, 0) != epoch(2, 0)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] += 0.2  # error 0.1 on the [0, 1] scale: 20 dB
    got = psnr(x, y)
    assert got[1].item() == pytest.approx(20.0, abs=1e-4) and got[0].item() > 90


def test_adaptive_weight_balances_gradients():
    loss = TokenizerLoss(gan_start=0, disc_weight=1.0)
    w = torch.ones(3, requires_grad=True)
    rec, g = (2 * w).sum(), (0.5 * w).sum()  # gradients 2 and 0.5 per element
    assert loss.adaptive_weight(rec, g, w).item() == pytest.approx(4.0, rel=1e-3)


def test_perceptual_loads_local_weights_and_names_missing_keys(tmp_path):
    torch.manual_seed(0)
    weights = Perceptual().state_dict()
    heads = {f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1) for k, w in enumerate([64, 128, 256, 512, 512])}
    vgg = {k: v for k, v in weights.items() if k.startswith("features.")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "lpips_vgg.pth")
    model = Perceptual.from_files([tmp_path / "vgg16.pth", tmp_path / "lpips_vgg.pth"])
    assert torch.equal(model.heads[3], heads["lin3.model.1.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = model(x, x.flip(0))
    assert d.shape == (2,) and (d > 0).all() and model(x, x).abs().max() < 1e-6
    del vgg["features.28.weight"]
    torch.save(vgg, tmp_path / "vgg16.pth")
    with pytest.raises(UserError, match="features.28.weight"):
        Perceptual.from_files([tmp_path / "vgg16.pth"])


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train-tokenizer", "--kind", "image", "--data", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "run"), "--steps", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_model_flags_reach_the_saved_config_and_bad_values_are_one_line(tmp_path, capsys, monkeypatch):
    data = write_images(tmp_path / "images", 4)
    monkeypatch.setattr("halluscope.tokenizers.config.IMAGE_PRESETS", {"tiny": TINY_IMAGE})
    base = ["train-tokenizer", "--kind", "image", "--data", str(data), "--resolution", "32", "--steps", "1",
            "--batch", "2"]
    assert main(base + ["--out", str(tmp_path / "run"), "--padding", "replicate", "--codebook-size", "16",
                        "--restart-every", "0", "--l2-weight", "4", "--device", "cpu"]) == 0
    config = load_tokenizer(tmp_path / "run" / "model").config
    assert (config.padding, config.n_embed) == ("replicate", 16)
    recipe = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (recipe["l2_weight"], recipe["device"]) == (4.0, "cpu")
    capsys.readouterr()
    for flags, message in [(["--downsample", "4,8,8"], "--downsample is for clip tokenizers"),
                           (["--restart-every", "-1"], "--restart-every must be 0"),
                           (["--codebook-size", "0"], "--codebook-size must be at least 1")] + (
                           [] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]):
        assert main(base + ["--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit):  # argparse: three factors or nothing
        main(base + ["--out", str(tmp_path / "bad"), "--downsample", "4,8"])
    assert "expected three positive integers" in capsys.readouterr().err
