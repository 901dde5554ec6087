"""The `scfdata` command line: a thin dispatcher over scfdata.commands.*.

Each module in scfdata/commands defines ``register(subparsers)``, which adds its sub-command(s) with
``set_defaults(func=...)``; ``func(args)`` returns the exit code. Errors that are the user's (bad
input, bad config: ValueError and its subclasses) print one clear message and exit 1; they never show a
traceback.

Start-up counts (a workflow runs thousands of short jobs): ``scfdata CMD`` imports only the module of CMD,
found in the static table :data:`COMMANDS`; the listing (``--help``, no command, an unknown command)
comes from the table without importing any command module. tests/test_startup.py checks that the table
matches the modules (a new command module needs its line there) and what each command imports.
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

#: command -> (its module in scfdata/commands, the one-line help its module gives it), in listing order
COMMANDS: dict[str, tuple[str, str]] = {
    "assemble": ("assemble", "merge shard files into one HDF5 file per split (workflow step)"),
    "check": ("check", "check a MACE_SCF train_schedule's losses against an scfdata file"),
    "derive": ("derive", "compute one derived target for a shard (workflow step)"),
    "warm-up": ("derive", "compile a derived target's numba kernels once (workflow step)"),
    "export": ("export", "write MACE's HDF5 layout or extxyz with the derived fields"),
    "index": ("ingest", "count the frames of the inputs and plan the shards (workflow step)"),
    "ingest": ("ingest", "read DFT frames (any ase.io format) into an scfdata HDF5 file"),
    "inspect": ("inspect", "what an scfdata HDF5 file holds (fields, coverage, losses)"),
    "plot-losses": ("plot_losses", "per-term loss curves from a training log's `loss breakdown:` lines"),
    "quality-shard": ("quality", "quality sketch of one base shard (workflow step)"),
    "quality": ("quality", "quality flags of a dataset: quality.npz + flags.tsv (workflow step)"),
    "report": ("report", "write a dataset's report.md with plots (workflow step)"),
    "split": ("split", "assign every config of the shards to train/valid/test (workflow step)"),
    "statistics-shard": ("statistics", "mergeable statistics sums of one shard (workflow step)"),
    "statistics": ("statistics", "merge shard sums into statistics.json (workflow step)"),
    "verify": ("verify", "check a file's structure, content and checksums, or a results directory's "
                         "published set (exit 1 on any problem)"),
}


def command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The parser. ``full`` (the default): every command module registers its sub-commands (imports them
    all). Otherwise only ``command``'s module does; every other command is listed from :data:`COMMANDS`,
    and a command missing from the table falls back to the full parser (so it still runs)."""
    if not full and command is not None and command not in COMMANDS:
        full = True
    parser = argparse.ArgumentParser(
        prog="scfdata",
        description="Reference targets (ESPs, dipoles, molecules, ...) and losses for charge-aware "
        "interatomic potentials. The workflow runs with `snakemake --cores 8`.",
    )
    parser.add_argument("--version", action="version", version=f"scfdata {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if full:
        for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
        return parser
    wanted = COMMANDS[command][0] if command else None
    for name, (module, help_text) in COMMANDS.items():
        if module != wanted:
            sub.add_parser(name, help=help_text)
        elif name not in sub.choices:  # the module registers all its commands at once
            importlib.import_module(f"{commands.__name__}.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv), full=False)
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
    except ValueError as e:  # FormatError, IngestError, ConfigError, ... are ValueErrors
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
