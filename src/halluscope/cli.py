"""The `halluscope` command. Each subpackage that offers commands has a `commands.py` with a
`register(subparsers)` function; this module only collects them and turns a UserError into
one readable line and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import sys

from halluscope import __version__
from halluscope.device import pick_device
from halluscope.errors import UserError

COMMAND_MODULES = (
    "halluscope.data.commands",
    "halluscope.tokenizers.commands",
    "halluscope.gpt.commands",
    "halluscope.probes.commands",
    "halluscope.app.commands",
    "halluscope.demo",
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
    try:
        if hasattr(args, "device"):  # every command's --device, checked once (see halluscope.device)
            args.device = str(pick_device(args.device))
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"halluscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"halluscope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
