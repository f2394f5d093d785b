"""scripts/app_abuse.py in its short form: 4 concurrent gradio_client clients x 3 requests,
good and bad uploads mixed, beside a client flooding the queue and one uploading decompression
bombs, against one server on 127.0.0.1 with tiny models; and the pieces that make it hold:
the model store (stray folders listed, at most N models kept) and the request guard."""

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_app import make_model

from halluscope.app.guard import MAX_PENDING_PER_CLIENT, MAX_WAITING_PER_ADDRESS, Guard
from halluscope.app.models import ModelStore
from halluscope.errors import UserError

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import app_abuse  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_clients_with_good_and_bad_uploads_a_flooder_and_bombs(capsys):
    code = app_abuse.main(["--clients", "4", "--requests", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 clients, 16 requests" in out and "failures: 0" in out and "on 127.0.0.1" in out
    assert "decompression bomb (PNG 9400²) 2, " in out and "decompression bomb (MP4 4096²) 1" in out
    joins, statuses = re.search(r"flooding client: (\d+) queue joins, HTTP status counts (\{.*?\});", out).groups()
    assert int(joins) > 50 and ast.literal_eval(statuses) == {200: MAX_PENDING_PER_CLIENT, 429: int(joins) - MAX_PENDING_PER_CLIENT}


# ----------------------------------------------------------------------------- model folders and the guard


def test_stray_and_unusable_model_folders_are_listed_with_their_reason(tmp_path):
    make_model(tmp_path / "models", "image")
    (tmp_path / "models" / "notes").mkdir()
    (tmp_path / "models" / "notes" / "config.json").write_text("[1, 2, 3]")  # a stray file, not a model
    (tmp_path / "models" / "half").mkdir()
    (tmp_path / "models" / "half" / "config.json").write_text('{"kind": "gp')
    make_model(tmp_path / "elsewhere", "image")
    borrowed = shutil.copytree(tmp_path / "elsewhere" / "image" / "gpt", tmp_path / "models" / "borrowed")
    config = json.loads((borrowed / "config.json").read_text())
    (borrowed / "config.json").write_text(json.dumps({**config, "tokenizer": str(tmp_path / "elsewhere" / "image"
                                                                                 / "tokenizer")}))
    os.mkfifo(tmp_path / "models" / "image" / "config.json")  # a FIFO must not hang the start-up
    store = ModelStore(tmp_path / "models")
    assert store.names == ["image/gpt"]
    reasons = dict(store.skipped)
    assert set(reasons) == {"borrowed", "half", "image", "notes"}
    assert "is not a JSON object" in reasons["notes"] and "is not valid JSON" in reasons["half"]
    assert "is a FIFO" in reasons["image"]
    assert reasons["borrowed"].startswith("its tokenizer ") and "lies outside --models" in reasons["borrowed"]
    with pytest.raises(UserError, match="; skipped .*/gpt: its tokenizer .* lies outside --models"):
        ModelStore(tmp_path / "elsewhere" / "image" / "gpt")  # why nothing is offered is part of the message


def test_at_most_keep_models_stay_loaded(tmp_path):
    make_model(tmp_path, "image")
    make_model(tmp_path, "video")
    store = ModelStore(tmp_path, keep=1)
    image = store.get("image/gpt")
    assert list(store.loaded) == ["image/gpt"]
    store.get("video/gpt")
    assert list(store.loaded) == ["video/gpt"]  # the least recently used one is dropped
    assert store.get("image/gpt") is not image and list(store.loaded) == ["image/gpt"]


class FakeQueue:
    """What Guard reads of gradio's queue: unread events per session, waiting events."""

    def __init__(self, pending: dict[str, int], waiting_hosts: list[str]):
        self.pending_event_ids_session = {s: set(range(n)) for s, n in pending.items()}
        event = lambda host: SimpleNamespace(request=SimpleNamespace(client=SimpleNamespace(host=host)))  # noqa: E731
        self.event_queue_per_concurrency_id = {"x": SimpleNamespace(queue=[event(h) for h in waiting_hosts])}


def test_the_guard_limits_each_client_and_each_address():
    guard = Guard(None, lambda: FakeQueue({"busy": MAX_PENDING_PER_CLIENT, "calm": 1},
                                          ["10.0.0.1"] * MAX_WAITING_PER_ADDRESS + ["10.0.0.2"]), lambda: "/", 100)
    assert "this client has 8 requests waiting" in guard.refuse_join("busy", "10.0.0.2")
    assert guard.refuse_join("calm", "10.0.0.2") is None and guard.refuse_join("new", "10.0.0.2") is None
    assert "requests from this address are waiting" in guard.refuse_join("new", "10.0.0.1")
    assert guard.refuse_upload(b"100") is None
    assert guard.refuse_upload(b"101")[0] == 413 and guard.refuse_upload(None)[0] == 411
    assert guard.refuse_upload(b"-5")[0] == 411


def test_the_gradio_queue_still_has_what_the_guard_reads():
    """The guard reads gradio internals; an upgrade that moves them must fail here, not silently."""
    from gradio.queueing import Event, Queue

    assert "pending_event_ids_session" in Queue.__init__.__code__.co_names
    assert "event_queue_per_concurrency_id" in Queue.__init__.__code__.co_names
    assert "request" in Event.__init__.__code__.co_names
