"""What the app's server refuses before gradio sees a request (an ASGI middleware).

gradio bounds the queue as a whole (64 waiting requests) and each uploaded file, but not what
one client may take of them: a client that sends requests without reading their results
filled the queue in under two seconds, and everyone else got 503; one upload POST may carry
1000 files. So:
- one client (a gradio session) may have at most MAX_PENDING_PER_CLIENT requests waiting,
  running or finished but unread; one address at most MAX_WAITING_PER_ADDRESS waiting (half
  the queue, so a client inventing a new session per request cannot take all of it);
- a multipart POST (an upload) must say its length, which may not exceed one file's limit,
  and is refused while the upload folder's disk has less than MIN_FREE_DISK free;
- gradio's screen-recording route, which runs ffmpeg on a client's file and which this page
  never uses, does not exist.
Refusals are JSON {"detail": message} with 429, 411, 413, 507 or 404, as gradio's own are.
The counts read gradio's queue (`Blocks._queue`): tests/test_reliability_app.py fails if a
gradio upgrade moves what they read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

MAX_PENDING_PER_CLIENT = 8  # a person clicking fast on the page stays well under it
MAX_WAITING_PER_ADDRESS = 32
MIN_FREE_DISK = 1 << 30
MAX_JOIN_BYTES = 1 << 20  # a queue/join body is a few hundred bytes of JSON
BLOCKED_SUFFIXES = ("/process_recording",)


class Guard:
    def __init__(self, app: Callable, queue: Callable[[], Any], upload_dir: Callable[[], str],
                 max_upload_bytes: int):
        self.app, self.queue, self.upload_dir, self.max_upload_bytes = app, queue, upload_dir, max_upload_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if path.endswith(BLOCKED_SUFFIXES):
            return await respond(send, 404, "Not Found")
        if scope["method"] == "POST" and headers.get(b"content-type", b"").startswith(b"multipart/"):
            refusal = self.refuse_upload(headers.get(b"content-length"))
            if refusal:
                return await respond(send, *refusal)
        if scope["method"] == "POST" and (path.endswith("/queue/join") or "/call/" in path):
            body = await read_body(receive, MAX_JOIN_BYTES)
            if body is None:
                return await respond(send, 413, "request body too large")
            host = (scope.get("client") or ("?", 0))[0]
            refusal = self.refuse_join(session_of(body), host)
            if refusal:
                return await respond(send, 429, refusal)
            receive = replay(body, receive)
        await self.app(scope, receive, send)

    def refuse_upload(self, length: bytes | None) -> tuple[int, str] | None:
        if length is None or not length.isdigit():
            return 411, "an upload must state its Content-Length"
        if int(length) > self.max_upload_bytes:
            return 413, f"upload of {int(length):,} bytes exceeds the maximum allowed size of " \
                        f"{self.max_upload_bytes:,} bytes"
        if free_bytes(Path(self.upload_dir())) < MIN_FREE_DISK:
            return 507, "the server's disk is nearly full; try again later"
        return None

    def refuse_join(self, session: str | None, host: str) -> str | None:
        queue = self.queue()
        if queue is None:
            return None
        if session is not None and len(queue.pending_event_ids_session.get(session, ())) >= MAX_PENDING_PER_CLIENT:
            return (f"this client has {MAX_PENDING_PER_CLIENT} requests waiting, running or unread; "
                    "read their results before sending more")
        waiting = sum(1 for events in queue.event_queue_per_concurrency_id.values() for event in events.queue
                      if event.request is not None and event.request.client is not None
                      and event.request.client.host == host)
        if waiting >= MAX_WAITING_PER_ADDRESS:
            return f"{waiting} requests from this address are waiting; try again when they have run"
        return None


def session_of(body: bytes) -> str | None:
    """The gradio session a queue/join body names (None for the plain REST API, or junk,
    which gradio then refuses itself)."""
    try:
        session = json.loads(body).get("session_hash")
    except (ValueError, AttributeError):
        return None
    return session if isinstance(session, str) else None


def free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:  # gradio makes its folder on first upload
        folder = folder.parent
    return shutil.disk_usage(folder).free


async def read_body(receive: Callable, limit: int) -> bytes | None:
    """The whole request body, or None past `limit` bytes."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


def replay(body: bytes, receive: Callable) -> Callable:
    """A `receive` that hands the application the body already read, then the real stream."""
    sent = False

    async def receive_again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return receive_again


async def respond(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
