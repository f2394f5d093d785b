"""Load check of the Gradio app: C concurrent gradio_client clients, each sending R sample
requests over HTTP to one server, against one client alone as the reference measured in the
same run. Every request must succeed; the table gives latency percentiles and throughput.

`python -m benchmarks app_load [--clients 8 --requests 3 --samples 4 --concurrency 2]`: the
tiny image presets (untrained: speed does not depend on the weights) on 64² world images,
context 4 of 8 token rows, fp32 on the CPU, the app's default queue (2 requests at a time).
`--models DIR --model NAME` measures trained models instead (e.g. runs/demo, gpt/model).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from gradio_client import Client, handle_file

from benchmarks._common import publish
from halluscope.app.models import ModelStore
from halluscope.app.ui import launch
from halluscope.data import ImageWorld
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")  # a proxy must never see the local server


def tiny_models(root: Path) -> str:
    """An untrained tiny image tokenizer and GPT under root; returns the GPT's name."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tokenizer_preset("image", "tiny"))
    save_tokenizer(tokenizer, root / "tokenizer")
    grid = tuple(tokenizer.grid)
    save_gpt(GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                            tokenizer=str(root / "tokenizer"))), root / "gpt")
    return "gpt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_run(url: str, model: str, images: list[Path], requests: int, samples: int, seed: int) -> list[float]:
    """One client's R requests in a row; the seconds each took from send to answer."""
    client = Client(url, verbose=False)
    times = []
    for r in range(requests):
        start = time.perf_counter()
        out = client.predict(model, handle_file(str(images[(seed + r) % len(images)])), 4, samples, 1.0, 0, 1.0,
                             seed * 100 + r, api_name="/sample")
        times.append(time.perf_counter() - start)
        if len(out[3]) != samples:
            raise RuntimeError(f"expected {samples} samples, got {len(out[3])}")
    return times


def stats(times: list[float], wall: float) -> dict:
    t = np.array(times)
    return {"requests": len(t), "p50_s": float(np.percentile(t, 50)), "p90_s": float(np.percentile(t, 90)),
            "max_s": float(t.max()), "wall_s": wall, "requests_per_s": len(t) / wall}


def measure(url: str, model: str, images: list[Path], clients: int, requests: int, samples: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda c: client_run(url, model, images, requests, samples, c), range(clients)))
    return stats([t for run in runs for t in run], time.perf_counter() - start)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks app_load", description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="the app's queue concurrency (its default: 2)")
    parser.add_argument("--models", default=None, help="models folder (default: tiny untrained models)")
    parser.add_argument("--model", default=None, help="model name under --models")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or tiny_models(tmp / "models")
        store = ModelStore(args.models or tmp / "models")
        size = store.get(model).tokenizer.resolution
        world = ImageWorld(size=size)
        images = [tmp / f"world-{i}.png" for i in range(8)]
        for i, path in enumerate(images):
            world.write(world.example(i)[0], path)
        demo = launch(store, tmp / "cache", port=free_port(), concurrency=args.concurrency, block=False)
        try:
            client_run(demo.local_url, model, images, 1, args.samples, 0)  # warm-up: first-call costs
            alone = measure(demo.local_url, model, images, 1, args.requests, args.samples)
            loaded = measure(demo.local_url, model, images, args.clients, args.requests, args.samples)
        finally:
            demo.close()
    rows = [{"clients": 1, **alone}, {"clients": args.clients, **loaded}]
    meta = {"model": model, "samples": args.samples, "concurrency": args.concurrency, "threads": args.threads,
            "resolution": size, "requests_per_client": args.requests, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine()}
    result = {"meta": meta, "rows": rows}
    return publish("app_load", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    meta, rows = result["meta"], result["rows"]
    alone, loaded = rows[0], rows[-1]
    out = [f"App load: {loaded['clients']} gradio_client clients, {loaded['requests']} /sample requests in all "
           f"({meta['samples']} samples, {meta['resolution']}² image, model {meta['model']}), queue concurrency "
           f"{meta['concurrency']}, {meta['threads']} torch thread(s); all requests succeeded\n",
           "| clients | requests | p50 s | p90 s | max s | requests/s | p50 vs 1 client |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['clients']} | {r['requests']} | {r['p50_s']:.2f} | {r['p90_s']:.2f} | {r['max_s']:.2f} | "
                   f"{r['requests_per_s']:.2f} | {r['p50_s'] / alone['p50_s']:.2f} |")
    return "\n".join(out)
