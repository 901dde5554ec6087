"""The `scfdata` command line: a thin dispatcher over scfdata.commands.*.

Each module in scfdata/commands defines ``register(subparsers)``, which adds its sub-command with
``set_defaults(func=...)``; ``func(args)`` returns the exit code. Errors that are the user's (bad
input, bad config) print one clear message and exit 1; they never show a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, commands
from .h5io import FormatError
from .ingest import IngestError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scfdata",
        description="Reference targets (ESPs, dipoles, molecules, ...) and losses for charge-aware "
        "interatomic potentials. The workflow runs with `snakemake --cores 8`.",
    )
    parser.add_argument("--version", action="version", version=f"scfdata {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FormatError, IngestError, ValueError, FileNotFoundError) as e:
        print(f"scfdata {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
