"""The `scfdata` command line: a thin dispatcher over scfdata.commands.*.

Each module in scfdata/commands defines ``register(subparsers)``, which adds its sub-command with
``set_defaults(func=...)``; ``func(args)`` returns the exit code. Errors that are the user's (bad
input, bad config) print one clear message and exit 1; they never show a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import signal
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
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) becomes an error on write, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return int(args.func(args) or 0)
    except (FormatError, IngestError, ValueError) as e:
        print(f"scfdata {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"scfdata {args.command}: error: out of memory; split the input into smaller files or run on "
              "a machine with more memory", file=sys.stderr)
        return 1
    except OSError as e:  # a directory, a full disk, a file-size limit, no permission: the system's reason
        where = e.filename or getattr(args, "output", None)
        reason = os.strerror(e.errno) if e.errno else str(e).splitlines()[0]
        print(f"scfdata {args.command}: error: {f'{where}: ' if where else ''}{reason}; check the path, the free "
              "space and the limits (ulimit -f)", file=sys.stderr)
        if e.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
            # HDF5 cannot release a file whose write failed: end here, before its teardown crashes
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
