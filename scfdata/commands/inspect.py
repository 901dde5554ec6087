"""`scfdata inspect FILE.h5 [--json]`."""

import json

from ..inspect import format_text, summarize


def register(sub) -> None:
    p = sub.add_parser("inspect", help="what an scfdata HDF5 file holds (fields, coverage, losses)")
    p.add_argument("file", help="an scfdata .h5 file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def run(args) -> int:
    s = summarize(args.file)
    print(json.dumps(s, indent=1, allow_nan=False) if args.json else format_text(s))
    return 0
