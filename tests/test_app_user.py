"""The app as the README starts it (`halluscope app --models DIR`, default cache, another
working directory), called over HTTP by gradio_client: Sample and Sweep on an image model and
a clip model, with world examples picked from the page's own list."""

from pathlib import Path

import pytest
from app_user import app_as_user
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_app import check_outputs, make_model

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting",
                                                              "ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def user_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    for kind in ("image", "video"):
        make_model(root / "models", kind)
    with app_as_user(root / "models", root) as (url, cache, log):
        yield Client(url, verbose=False), cache, log


@pytest.mark.parametrize("model, suffix, context", [("image/gpt", ".png", 4), ("video/gpt", ".gif", 1)])
def test_sample_and_sweep_with_the_default_cache(user_app, model, suffix, context):
    client, cache, log = user_app
    client.predict(model, api_name="/model")
    name = "world-2" + (".png" if suffix == ".png" else ".mp4")
    example = client.predict(model, name, api_name="/example")  # downloaded by the client
    assert Path(example).name == name and (cache / "examples").is_dir()
    outputs = client.predict(model, handle_file(example), context, 3, 1.0, 0, 1.0, 5, api_name="/sample")
    check_outputs(outputs, 3, suffix)
    plot = client.predict(model, handle_file(example), 2, 1.0, 0, 1.0, 0, api_name="/sweep")
    assert plot is not None
    assert "Traceback" not in log.read_text()


def test_a_failure_is_one_line_without_server_paths(user_app, tmp_path):
    client, cache, log = user_app
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    client.predict("image/gpt", api_name="/model")  # the context slider follows the picked model
    with pytest.raises(AppError) as e:
        client.predict("image/gpt", handle_file(str(bad)), 4, 2, 1.0, 0, 1.0, 0, api_name="/sample")
    message = str(e.value)
    assert "cannot read broken.png" in message
    assert "\n" not in message.strip() and "Traceback" not in message
    assert str(cache) not in message and "/tmp" not in message and str(tmp_path) not in message
