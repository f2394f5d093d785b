"""`halluscope app`: serve the Gradio page for the models under a folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from halluscope.errors import UserError

DEFAULT_MODELS = "runs/demo"  # where `halluscope demo` writes its models


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "halluscope" / "app"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("app", help="the interactive page: continuations of an upload, with metrics")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"folder searched for GPT model folders; nothing outside it is offered (default {DEFAULT_MODELS})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--concurrency", type=int, default=2, help="requests run at once; others queue (default 2)")
    p.add_argument("--keep-models", type=int, default=2,
                   help="models kept loaded; the least recently used beyond that is dropped (default 2)")
    p.add_argument("--time-budget", type=float, default=300,
                   help="seconds one request may run before it stops with an error (default 300)")
    p.add_argument("--cache", default=None, help=f"folder for examples and request files (default {default_cache()})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(func=app_command)


def app_command(args: argparse.Namespace) -> int:
    cache = Path(args.cache or default_cache())
    # gradio's uploads and copies of outputs go into the cache, where the app sweeps them
    # (app/ui.py): set before gradio is imported, which reads it then.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cache.resolve() / "gradio"))
    # Imported here: gradio takes seconds to import, and every other command would pay for it.
    from halluscope.app.models import ModelStore
    from halluscope.app.ui import launch

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not args.time_budget > 0:
        raise UserError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    store = ModelStore(args.models, args.device, keep=args.keep_models)
    print(f"models under {store.root}: {', '.join(store.names)}")
    for name, reason in store.skipped:
        print(f"  skipped {name}: {reason}")
    try:
        launch(store, cache, host=args.host, port=args.port, share=args.share,
               concurrency=args.concurrency, time_budget=args.time_budget)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0
