"""The `halluscope` command. Each subpackage that offers commands has a `commands.py` with a
`register(subparsers)` function; this module only collects them, holds the lock on a
command's output folder (`--out`) while it runs, and turns a UserError (or a full disk) into
one readable line and a non-zero exit."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shlex
import sys

from halluscope import __version__
from halluscope.device import pick_device
from halluscope.errors import UserError
from halluscope.io import disk_full_error, is_disk_full, output_lock

COMMAND_MODULES = (
    "halluscope.data.commands",
    "halluscope.tokenizers.commands",
    "halluscope.gpt.commands",
    "halluscope.import_tats",
    "halluscope.import_llamagen",
    "halluscope.probes.commands",
    "halluscope.app.commands",
    "halluscope.demo",
    "halluscope.study",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halluscope",
        description="A workbench for autoregressive image and video models and for probing how they hallucinate.",
    )
    parser.add_argument("--version", action="version", version=f"halluscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not a part not built yet
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["halluscope", *(sys.argv[1:] if argv is None else argv)])
    try:
        if hasattr(args, "device"):  # every command's --device, checked once (see halluscope.device)
            args.device = str(pick_device(args.device))
        # Every command that writes an --out folder holds it alone for the whole run: two
        # writers would mix their files (see halluscope.io.output_lock).
        out = getattr(args, "out", None)
        with output_lock(out, command) if out else contextlib.nullcontext():
            return int(args.func(args) or 0)
    except UserError as e:
        print(f"halluscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"halluscope {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a write outside halluscope.io's (an appended log line) met a full disk
        if not is_disk_full(e):
            raise
        where = getattr(e, "filename", None) or getattr(args, "out", None) or "its output"
        print(f"halluscope {args.command}: error: {disk_full_error(where)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
