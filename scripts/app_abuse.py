"""The app under load and abuse: C concurrent gradio_client clients each send R requests to one
server, mixing good uploads with bad ones (a text file named .png, an empty file, an upload
over the size limit, model names with path separators or "..", out-of-range settings).
Every good request must succeed, every bad one must come back as an error message, the
server must stay up and its memory bounded; it must listen on 127.0.0.1 unless told not to.

Two hostile clients run beside them. The flooder sends a request to the queue every 10 ms
for as long as the others run, never reading a result (66 such requests filled gradio's 64
slots in 1.8 s): at most MAX_PENDING_PER_CLIENT of them may be taken, the rest refused with
429, and no well-behaved client may fail meanwhile. The bomb client uploads decompression bombs (a 258 KB PNG of
9400², a 190 KB video of 4096² frames): each must be refused from its header, within the
memory bound. Afterwards every upload must be deleted by the upload sweep (its age lowered
to --keep-uploads seconds for the run).

    .venv/bin/python scripts/app_abuse.py --clients 10 --requests 3     # the recorded run
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
from halluscope.app.guard import MAX_PENDING_PER_CLIENT  # noqa: E402
from halluscope.app.models import ModelStore  # noqa: E402
from halluscope.app.ui import launch  # noqa: E402
from halluscope.cli import build_parser  # noqa: E402
from halluscope.data import ImageWorld, VideoWorld  # noqa: E402
from halluscope.gpt.checkpoint import save_gpt  # noqa: E402
from halluscope.gpt.config import preset as gpt_preset  # noqa: E402
from halluscope.gpt.model import GPT  # noqa: E402
from halluscope.tokenizers import build_tokenizer, save_tokenizer  # noqa: E402
from halluscope.tokenizers import preset as tokenizer_preset  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from bad_inputs import png_of_zeros, video_of_zeros  # noqa: E402  (the corpus's bombs)

MODEL, CLIP_MODEL = "image/gpt", "video/gpt"


@dataclass
class Request:
    kind: str  # "good" or the kind of abuse
    model: str
    upload: str
    context: int = 4
    temperature: float = 1.0
    expect: str = ""  # for a bad request: a part of its error message


def write_files(root: Path, max_upload_mb: int) -> dict[str, Path]:
    """Tiny untrained models under root/models (an image model, and a clip model for the video
    bomb) and the uploads the clients send."""
    torch.manual_seed(0)
    for kind, overrides in (("image", {}), ("video", {"frames": 8})):
        tokenizer = build_tokenizer(tokenizer_preset(kind, "tiny", resolution=32, **overrides))
        save_tokenizer(tokenizer, root / "models" / kind / "tokenizer")
        grid = tuple(tokenizer.grid)
        save_gpt(GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                                tokenizer=str(root / "models" / kind / "tokenizer"))), root / "models" / kind / "gpt")
    files = {"good": root / "good.png", "good clip": root / "good.mp4", "text": root / "notes.png",
             "empty": root / "empty.png", "huge": root / "huge.png", "png bomb": root / "bomb.png",
             "video bomb": root / "bomb.mp4"}
    ImageWorld(size=32).write(ImageWorld(size=32).example(0)[0], files["good"])
    VideoWorld(size=32, frames=8).write(VideoWorld(size=32, frames=8).example(0)[0], files["good clip"])
    files["text"].write_text("not an image\n")
    files["empty"].write_bytes(b"")
    files["huge"].write_bytes(os.urandom(int((max_upload_mb + 1) * 2**20)))
    png_of_zeros(files["png bomb"], 9400, 9400)
    video_of_zeros(files["video bomb"], 4096)
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


def bombs(files: dict[str, Path]) -> list[Request]:
    """What the bomb client sends, in turn."""
    return [Request("decompression bomb (PNG 9400²)", MODEL, str(files["png bomb"]),
                    expect="too large to decode safely: 9400x9400"),
            Request("decompression bomb (MP4 4096²)", CLIP_MODEL, str(files["video bomb"]), context=1,
                    expect="frames too large to decode safely: 4096x4096")]


def send(client: Client, r: Request):
    return client.predict(r.model, handle_file(r.upload), r.context, 2, r.temperature, 0, 1.0, 7, api_name="/sample")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flood(url: str, fn_index: int, upload: Path, joins: int, stop: threading.Event) -> Counter:
    """One client sending sample requests to the queue, up to `joins` of them, one every 10 ms
    until `stop` is set, never reading a result (it opens no /queue/data stream): the HTTP
    status of each, counted. Without a limit per client it keeps gradio's queue full."""
    statuses: Counter = Counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        with open(upload, "rb") as f:
            path = http.post("gradio_api/upload", files={"files": f}).json()[0]
        data = [MODEL, {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": upload.name}, 4, 2, 1.0, 0,
                1.0, 7, "visible"]
        body = {"data": data, "fn_index": fn_index, "session_hash": "flooder", "event_data": None,
                "trigger_id": None}
        while sum(statuses.values()) < joins and not stop.is_set():
            statuses[http.post("gradio_api/queue/join", json=body).status_code] += 1
            time.sleep(0.01)
    return statuses


def run(clients: int, per_client: int, work: Path, max_upload_mb: int, seed: int, joins: int,
        keep_uploads: int) -> dict:
    """The run, with the upload limit, the uploads' age and gradio's upload folder changed for
    its duration only (the server runs in this process)."""
    saved = inference.MAX_UPLOAD_MB, inference.KEEP_UPLOADS_S, os.environ.get("GRADIO_TEMP_DIR")
    inference.MAX_UPLOAD_MB = max_upload_mb  # read by launch() and by every request
    inference.KEEP_UPLOADS_S = keep_uploads  # read by launch()
    os.environ["GRADIO_TEMP_DIR"] = str(work / "cache" / "gradio")  # as `halluscope app` has it; swept
    try:
        return serve_and_abuse(clients, per_client, work, max_upload_mb, seed, joins, keep_uploads)
    finally:
        inference.MAX_UPLOAD_MB, inference.KEEP_UPLOADS_S = saved[:2]
        if saved[2] is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved[2]


def serve_and_abuse(clients: int, per_client: int, work: Path, max_upload_mb: int, seed: int, joins: int,
                    keep_uploads: int) -> dict:
    files = write_files(work, max_upload_mb)
    kinds = requests(files)
    demo = launch(ModelStore(work / "models"), work / "cache", port=free_port(), block=False, concurrency=2)
    counts: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    try:
        url = demo.local_url
        warm = Client(url, verbose=False)
        send(warm, kinds[0])  # the models are loaded: memory from here on is what requests add
        send(warm, Request("good", CLIP_MODEL, str(files["good clip"]), context=1))
        rss_start, rss_peak = rss_mb(), rss_mb()

        def record(r: Request, call) -> None:
            nonlocal rss_peak
            try:
                outputs = call()
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

        def client_thread(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            client = Client(url, verbose=False)
            for _ in range(per_client):
                r = kinds[0] if rng.random() < 0.5 else rng.choice(kinds[1:])
                record(r, lambda: send(client, r))

        def bomb_thread() -> None:
            client = Client(url, verbose=False)
            for i in range(per_client):
                r = bombs(files)[i % 2]
                record(r, lambda: send(client, r))

        flooded: Counter = Counter()
        clients_done = threading.Event()

        def flood_thread() -> None:
            fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "sample")
            flooded.update(flood(url, fn_index, files["good"], joins, clients_done))

        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(clients)]
        threads += [threading.Thread(target=bomb_thread)]
        hostile = threading.Thread(target=flood_thread)
        t0 = time.perf_counter()
        for t in threads + [hostile]:
            t.start()
        for t in threads:
            t.join()
        clients_done.set()
        hostile.join()
        seconds = time.perf_counter() - t0
        taken = flooded[200]
        if taken > MAX_PENDING_PER_CLIENT or flooded[429] != sum(flooded.values()) - taken:
            failures.append(f"flooder: {dict(flooded)} (HTTP status: count); at most {MAX_PENDING_PER_CLIENT} "
                            "may be taken, the rest refused with 429")
        send(warm, kinds[0])  # still up and still right
        # gradio_client refuses an oversized file itself; a hostile client would not, so the
        # server's own refusal is checked over plain HTTP too.
        with open(files["huge"], "rb") as f:
            status = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60).status_code
        counts[("over the size limit (raw HTTP)", status == 413)] += 1
        if status != 413:
            failures.append(f"raw oversized upload got HTTP {status}, expected 413")
        host = demo.server_name
        uploads = [p for p in (work / "cache" / "gradio").rglob("*") if p.is_file()]
        time.sleep(keep_uploads + max(1, keep_uploads // 2) + 1)  # older than the age, and one sweep later
        left = [p for p in uploads if p.exists()]
        if not uploads or left:
            failures.append(f"upload sweep: {len(left)} of {len(uploads)} uploads left after {keep_uploads} s "
                            f"(e.g. {left[:3]})")
    finally:
        demo.close()
    default_host = build_parser().parse_args(["app"]).host
    if host != "127.0.0.1" or default_host != "127.0.0.1":
        failures.append(f"server listened on {host} (CLI default {default_host}), not 127.0.0.1")
    good = sum(n for (kind, _), n in counts.items() if kind == "good")
    return {"clients": clients, "requests": sum(counts.values()), "good": good, "bad": sum(counts.values()) - good,
            "failures": failures, "seconds": seconds, "rss_start_mb": rss_start, "rss_peak_mb": rss_peak,
            "by_kind": {kind: counts[(kind, True)] + counts[(kind, False)] for kind in {k for k, _ in counts}},
            "host": host, "flood": dict(flooded), "uploads_swept": len(uploads) - len(left)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    parser.add_argument("--max-upload-mb", type=int, default=1, help="upload limit during the run (default 1)")
    parser.add_argument("--max-growth-mb", type=float, default=400.0,
                        help="most the server's memory may grow over the run (default 400)")
    parser.add_argument("--flood", type=int, default=2000,
                        help="most queue joins the flooding client sends while the others run (default 2000)")
    parser.add_argument("--keep-uploads", type=int, default=10,
                        help="age in seconds past which uploads are deleted, for the run; longer than any "
                             "request waits in the queue (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.clients, args.requests, Path(tmp), args.max_upload_mb, args.seed, args.flood,
                     args.keep_uploads)
    growth = result["rss_peak_mb"] - result["rss_start_mb"]
    if growth > args.max_growth_mb:
        result["failures"].append(f"memory grew by {growth:.0f} MB (limit {args.max_growth_mb:.0f})")
    print(f"{result['clients']} clients, {result['requests']} requests ({result['good']} good, {result['bad']} bad) "
          f"in {result['seconds']:.0f} s on {result['host']}; failures: {len(result['failures'])}; memory "
          f"{result['rss_start_mb']:.0f} MB after warm-up, peak {result['rss_peak_mb']:.0f} MB (+{growth:.0f} MB)")
    print("requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(result["by_kind"].items())))
    print(f"flooding client: {sum(result['flood'].values())} queue joins, HTTP status counts {result['flood']}; "
          f"uploads deleted by the sweep: {result['uploads_swept']}")
    for failure in result["failures"]:
        print("  FAILED " + failure)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
