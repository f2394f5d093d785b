"""The app under load and abuse: C concurrent gradio_client clients each send R requests to one
server, mixing good uploads with bad ones (a text file named .png, an empty file, an upload
over the size limit, model names with path separators or "..", out-of-range settings).
Every good request must succeed, every bad one must come back as an error message, the
server must stay up and its memory bounded; it must listen on 127.0.0.1 unless told not to.

    .venv/bin/python scripts/app_abuse.py --clients 20 --requests 5     # the recorded run
    .venv/bin/python scripts/app_abuse.py --clients 4 --requests 3      # what CI runs

The server runs in this process (tiny untrained models written to a temporary folder), so
its memory is this process's resident set; the upload limit is lowered to --max-upload-mb so
that an oversized upload stays small. Prints the counts; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")  # a proxy must never see the local server

from gradio_client import Client, handle_file  # noqa: E402

from halluscope.app import inference  # noqa: E402
from halluscope.app.models import ModelStore  # noqa: E402
from halluscope.app.ui import launch  # noqa: E402
from halluscope.cli import build_parser  # noqa: E402
from halluscope.data import ImageWorld  # noqa: E402
from halluscope.gpt.checkpoint import save_gpt  # noqa: E402
from halluscope.gpt.config import preset as gpt_preset  # noqa: E402
from halluscope.gpt.model import GPT  # noqa: E402
from halluscope.tokenizers import build_tokenizer, save_tokenizer  # noqa: E402
from halluscope.tokenizers import preset as tokenizer_preset  # noqa: E402

MODEL = "image/gpt"


@dataclass
class Request:
    kind: str  # "good" or the kind of abuse
    model: str
    upload: str
    context: int = 4
    temperature: float = 1.0
    expect: str = ""  # for a bad request: a part of its error message


def write_files(root: Path, max_upload_mb: int) -> dict[str, Path]:
    """Tiny untrained models under root/models and the uploads the clients send."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tokenizer_preset("image", "tiny", resolution=32))
    save_tokenizer(tokenizer, root / "models" / "image" / "tokenizer")
    grid = tuple(tokenizer.grid)
    save_gpt(GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                            tokenizer=str(root / "models" / "image" / "tokenizer"))), root / "models" / "image" / "gpt")
    files = {"good": root / "good.png", "text": root / "notes.png", "empty": root / "empty.png",
             "huge": root / "huge.png"}
    ImageWorld(size=32).write(ImageWorld(size=32).example(0)[0], files["good"])
    files["text"].write_text("not an image\n")
    files["empty"].write_bytes(b"")
    files["huge"].write_bytes(os.urandom(int((max_upload_mb + 1) * 2**20)))
    return files


def requests(files: dict[str, Path]) -> list[Request]:
    """One of each kind; clients draw from them with good requests as likely as all bad ones."""
    good = str(files["good"])
    return [
        Request("good", MODEL, good),
        Request("text named .png", MODEL, str(files["text"]), expect="not an image"),
        Request("empty file", MODEL, str(files["empty"]), expect="empty file"),
        Request("over the size limit", MODEL, str(files["huge"]), expect="exceeds the maximum file size"),
        Request("model name with ..", "image/../image/gpt", good, expect="not in the list of choices"),
        Request("model name as a path", "../../etc/passwd", good, expect="not in the list of choices"),
        Request("context out of range", MODEL, good, context=99, expect="greater than maximum value"),
        Request("temperature 0", MODEL, good, temperature=0.0, expect="minimum value"),
    ]


def send(client: Client, r: Request):
    return client.predict(r.model, handle_file(r.upload), r.context, 2, r.temperature, 0, 1.0, 7, api_name="/sample")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(clients: int, per_client: int, work: Path, max_upload_mb: int, seed: int) -> dict:
    inference.MAX_UPLOAD_MB = max_upload_mb  # read by launch() and by every request
    files = write_files(work, max_upload_mb)
    kinds = requests(files)
    demo = launch(ModelStore(work / "models"), work / "cache", port=free_port(), block=False, concurrency=2)
    counts: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    try:
        url = demo.local_url
        warm = Client(url, verbose=False)
        send(warm, kinds[0])  # the model is loaded: memory from here on is what requests add
        rss_start, rss_peak = rss_mb(), rss_mb()

        def client_thread(k: int) -> None:
            nonlocal rss_peak
            rng = random.Random(seed * 1000 + k)
            client = Client(url, verbose=False)
            for _ in range(per_client):
                r = kinds[0] if rng.random() < 0.5 else rng.choice(kinds[1:])
                try:
                    outputs = send(client, r)
                    ok = r.kind == "good" and len(outputs[3]) == 2
                    problem = "" if ok else f"{r.kind}: succeeded, expected an error"
                except Exception as e:  # gradio_client's AppError, or the upload refused over HTTP
                    message = str(e)
                    ok = r.kind != "good" and r.expect in message and "Traceback" not in message
                    problem = "" if ok else f"{r.kind}: {type(e).__name__}: {message[:200]}"
                with lock:
                    counts[(r.kind, ok)] += 1
                    rss_peak = max(rss_peak, rss_mb())
                    if problem:
                        failures.append(problem)

        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        send(warm, kinds[0])  # still up and still right
        # gradio_client refuses an oversized file itself; a hostile client would not, so the
        # server's own refusal is checked over plain HTTP too.
        with open(files["huge"], "rb") as f:
            status = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60).status_code
        counts[("over the size limit (raw HTTP)", status == 413)] += 1
        if status != 413:
            failures.append(f"raw oversized upload got HTTP {status}, expected 413")
        host = demo.server_name
    finally:
        demo.close()
    default_host = build_parser().parse_args(["app"]).host
    if host != "127.0.0.1" or default_host != "127.0.0.1":
        failures.append(f"server listened on {host} (CLI default {default_host}), not 127.0.0.1")
    good = sum(n for (kind, _), n in counts.items() if kind == "good")
    return {"clients": clients, "requests": sum(counts.values()), "good": good, "bad": sum(counts.values()) - good,
            "failures": failures, "seconds": seconds, "rss_start_mb": rss_start, "rss_peak_mb": rss_peak,
            "by_kind": {kind: counts[(kind, True)] + counts[(kind, False)] for kind in {k for k, _ in counts}},
            "host": host}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    parser.add_argument("--max-upload-mb", type=int, default=1, help="upload limit during the run (default 1)")
    parser.add_argument("--max-growth-mb", type=float, default=400.0,
                        help="most the server's memory may grow over the run (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.clients, args.requests, Path(tmp), args.max_upload_mb, args.seed)
    growth = result["rss_peak_mb"] - result["rss_start_mb"]
    if growth > args.max_growth_mb:
        result["failures"].append(f"memory grew by {growth:.0f} MB (limit {args.max_growth_mb:.0f})")
    print(f"{result['clients']} clients, {result['requests']} requests ({result['good']} good, {result['bad']} bad) "
          f"in {result['seconds']:.0f} s on {result['host']}; failures: {len(result['failures'])}; memory "
          f"{result['rss_start_mb']:.0f} MB after warm-up, peak {result['rss_peak_mb']:.0f} MB (+{growth:.0f} MB)")
    print("requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(result["by_kind"].items())))
    for failure in result["failures"]:
        print("  FAILED " + failure)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
