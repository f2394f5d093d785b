"""The Gradio app served on a free localhost port with tiny untrained models (one image model,
one clip model) and called over HTTP by gradio_client, as a remote user would."""

import contextlib
import math
import os
import socket
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from halluscope.app.models import ModelStore
from halluscope.app.ui import launch
from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt, save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.llama import LlamaGPT
from halluscope.gpt.model import GPT
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")  # a proxy must never see the local server
# gradio's own use of pandas, not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
METRICS = ["match rate", "diversity", "NLL ground truth", "NLL samples", "PSNR best (dB)", "PSNR mean (dB)"]


def make_model(root: Path, kind: str) -> tuple[int, ...]:
    """root/{kind}/tokenizer and root/{kind}/gpt: tiny untrained models for 32² inputs (8 frames)."""
    torch.manual_seed(0)
    overrides = {"resolution": 32} if kind == "image" else {"resolution": 32, "frames": 8}
    tokenizer = build_tokenizer(tokenizer_preset(kind, "tiny", **overrides))
    save_tokenizer(tokenizer, root / kind / "tokenizer")
    grid = tuple(tokenizer.grid)
    gpt = GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                         tokenizer=str(root / kind / "tokenizer")))
    save_gpt(gpt, root / kind / "gpt")
    return grid


def make_llama(root: Path) -> None:
    """root/image/llama: a class-conditional Llama-style GPT with a null class (for guidance)
    beside make_model's image GPT, reading its tokenizer."""
    c = load_gpt(root / "image" / "gpt").config
    llama = LlamaGPT(gpt_preset("tiny", vocab_size=c.vocab_size, block_size=c.block_size, grid=c.grid,
                                block="llama", n_cond=1, cond_vocab_size=5, null_cond=4, tokenizer=c.tokenizer))
    with torch.no_grad():  # sharp logits, so a class or a guidance scale visibly changes the samples
        llama.head.weight.mul_(30)
    save_gpt(llama, root / "image" / "llama")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(root: Path):
    """The app for the models under root/models on a free port; yields its URL, always closes it."""
    demo = launch(ModelStore(root / "models"), root / "cache", port=free_port(), block=False)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    grids = {kind: make_model(root / "models", kind) for kind in ("image", "video")}
    make_llama(root / "models")
    ImageWorld(size=32).write(ImageWorld(size=32).example(0)[0], root / "image.png")
    world = VideoWorld(size=32, frames=8)
    world.write(world.example(0)[0], root / "clip.mp4")
    short = VideoWorld(size=32, frames=3)
    short.write(short.example(0)[0], root / "short.mp4")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    (root / "notes.txt").write_text("hello")
    with serve(root) as url:
        yield Client(url, verbose=False), root, grids


def sample(client, model: str, path: Path, context: int, samples: int = 3):
    return client.predict(model, handle_file(str(path)), context, samples, 1.0, 0, 1.0, 7, api_name="/sample")


def check_outputs(outputs, samples: int, suffix: str) -> dict:
    context, truth, recon, gallery, table, entropy = outputs
    for path in (context, truth, recon):
        assert Path(path).suffix == suffix and Path(path).stat().st_size > 0
    assert len(gallery) == samples and all(Path(g["image"]).suffix == suffix for g in gallery)
    assert Path(entropy).suffix == ".png"
    rows = {row[0]: row[1] for row in table["data"]}
    assert set(METRICS) <= set(rows)
    assert 0 <= rows["match rate"] <= 1 and 0 <= rows["diversity"] <= 1 and rows["NLL ground truth"] > 0
    return rows


def test_lists_only_gpt_folders_and_refuses_other_names(server):
    client, root, _ = server
    assert ModelStore(root / "models").names == ["image/gpt", "image/llama", "video/gpt"]
    with pytest.raises(UserError, match="unknown model"):
        ModelStore(root / "models").get("../../etc")
    with pytest.raises(AppError, match="not in the list of choices"):  # gradio checks the dropdown itself
        sample(client, str(root / "models" / "image" / "gpt"), root / "image.png", 4)


def test_image_request_returns_context_truth_samples_and_metrics(server):
    client, root, _ = server
    rows = check_outputs(sample(client, "image/gpt", root / "image.png", context=4, samples=3), 3, ".png")
    again = check_outputs(sample(client, "image/gpt", root / "image.png", context=4, samples=3), 3, ".png")
    assert rows == again  # same seed, same answer


def test_clip_request_returns_gifs(server):
    client, root, _ = server
    check_outputs(sample(client, "video/gpt", root / "clip.mp4", context=1, samples=2), 2, ".gif")


@pytest.mark.parametrize("name, model, message", [
    ("broken.png", "image/gpt", "cannot read broken.png"),
    ("notes.txt", "image/gpt", "notes.txt is not an image or a video"),
    ("image.png", "video/gpt", "video/gpt is a video model: upload a video"),
    ("short.mp4", "video/gpt", "cannot read short.mp4: too short: 3 frames, a clip needs 8"),
])
def test_bad_upload_is_one_readable_error(server, name, model, message):
    client, root, _ = server
    with pytest.raises(AppError) as e:
        sample(client, model, root / name, 1)
    assert message in str(e.value) and "Traceback" not in str(e.value)


def test_bad_settings_are_readable_errors(server):
    client, root, grids = server
    frames = grids["video"][0]
    with pytest.raises(AppError, match=f"context must be 1 to {frames - 1} latent frames, got {frames}"):
        sample(client, "video/gpt", root / "clip.mp4", context=frames)
    with pytest.raises(AppError, match="less than minimum value 0.05"):  # gradio checks its sliders itself
        client.predict("image/gpt", handle_file(str(root / "image.png")), 4, 2, 0.0, 0, 1.0, 0, api_name="/sample")


def test_guidance_and_class_reach_a_conditional_model(server):
    client, root, _ = server
    guided = client.predict("image/llama", handle_file(str(root / "image.png")), 4, 2, 1.0, 0, 1.0, 7, "visible",
                            3.0, 2, api_name="/sample")
    plain = client.predict("image/llama", handle_file(str(root / "image.png")), 4, 2, 1.0, 0, 1.0, 7, "visible",
                           1.0, 2, api_name="/sample")
    check_outputs(guided, 2, ".png")
    assert guided[4] != plain[4]  # the metrics differ: the scale reached the sampler
    with pytest.raises(AppError, match="cfg_scale 3 needs a GPT with a null condition"):
        client.predict("image/gpt", handle_file(str(root / "image.png")), 4, 2, 1.0, 0, 1.0, 7, "visible", 3.0,
                       None, api_name="/sample")
    with pytest.raises(AppError, match="this GPT is unconditional"):
        client.predict("image/gpt", handle_file(str(root / "image.png")), 4, 2, 1.0, 0, 1.0, 7, "visible", 1.0,
                       2, api_name="/sample")


def test_example_and_sweep(server):
    client, root, _ = server
    info, _, _, _ = client.predict("video/gpt", api_name="/model")
    assert "video model" in info and "2 × 8 × 8" in info
    path = client.predict("video/gpt", "world-1.mp4", api_name="/example")
    assert Path(path).name == "world-1.mp4"
    assert sorted(p.name for p in (root / "cache" / "examples" / "video-32x8").iterdir()) == [
        f"world-{i}.mp4" for i in range(6)]
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict("video/gpt", "../../models/image/gpt/config.json", api_name="/example")
    plot = client.predict("image/gpt", handle_file(str(root / "image.png")), 2, 1.0, 0, 1.0, 0, api_name="/sweep")
    assert plot is not None


def test_an_unexpected_failure_is_one_line_without_its_details():
    import gradio as gr

    from halluscope.app.ui import readable_errors

    @readable_errors
    def handler():
        raise RuntimeError("cannot open /srv/secret/model.safetensors")

    with pytest.raises(gr.Error) as e:
        handler()
    assert e.value.message == ("the server could not complete this request (RuntimeError); "
                               "its log has the details")


def test_cli_refuses_a_folder_without_models(tmp_path, capsys):
    assert main(["app", "--models", str(tmp_path / "missing")]) == 2
    assert "models folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["app", "--models", str(tmp_path / "empty"), "--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert main(["app", "--models", str(tmp_path / "empty")]) == 2
    assert "no GPT model folders" in capsys.readouterr().err


def test_a_tokenizer_outside_the_models_folder_is_not_offered(tmp_path):
    make_model(tmp_path, "image")  # tmp_path/image/{tokenizer,gpt}
    assert ModelStore(tmp_path / "image").names == ["gpt"]
    with pytest.raises(UserError, match="no GPT model folders"):  # its tokenizer, ../tokenizer, is outside
        ModelStore(tmp_path / "image" / "gpt")


def test_a_training_runs_intermediate_checkpoints_are_not_offered(tmp_path):
    make_model(tmp_path, "image")  # tmp_path/image/{tokenizer,gpt}
    save_gpt(load_gpt(tmp_path / "image" / "gpt"), tmp_path / "image" / "checkpoints" / "step_00000002")
    assert (tmp_path / "image" / "checkpoints" / "step_00000002" / "config.json").is_file()
    assert ModelStore(tmp_path).names == ["image/gpt"]
