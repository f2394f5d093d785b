"""The app started the way a user starts it: `halluscope app --models DIR` in a subprocess,
from a working directory of its own, with the default cache (under XDG_CACHE_HOME) in a folder
that is neither under that working directory nor under the system temp folder — where gradio
serves nothing unless the app allows it. (A cache under the temp folder hid a broken app.)"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HALLUSCOPE = Path(sys.executable).with_name("halluscope")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_as_user(models: Path, home: Path, timeout: float = 120):
    """Serve `halluscope app --models models` from home/cwd with XDG_CACHE_HOME=home/xdg and
    TMPDIR=home/systmp; yields (url, cache folder, server log path); always stops the server."""
    cwd, xdg, systmp = home / "cwd", home / "xdg", home / "systmp"
    for folder in (cwd, xdg, systmp):
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg), "TMPDIR": str(systmp), "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("GRADIO_TEMP_DIR", None)
    port = free_port()
    log = home / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(HALLUSCOPE), "app", "--models", str(models), "--port", str(port)],
                                  cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"the app exited ({server.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the app did not answer within {timeout} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url, xdg / "halluscope" / "app", log
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
