"""`scfdata report`: results/<ds>/report.md (+ plots/) from the assemble manifest and statistics.json."""

from __future__ import annotations

import logging

from ..report import build_report
from . import json_file

log = logging.getLogger("scfdata.report")


def register(sub) -> None:
    p = sub.add_parser("report", help="write a dataset's report.md with plots (workflow step)")
    p.add_argument("--manifest", required=True, help="manifest.json from `scfdata assemble`")
    p.add_argument("--statistics", help="statistics.json from `scfdata statistics`")
    p.add_argument("--flags", help="flags.tsv from `scfdata quality` (examples per flag; absent: the report "
                   "says quality flags were not computed)")
    p.add_argument("--max-points", type=int, default=200_000, help="entries per plotted field at most")
    p.add_argument("-o", "--output", required=True, help="report .md")
    p.set_defaults(func=run)


def run(args) -> int:
    manifest = json_file(args.manifest, "the manifest.json written by `scfdata assemble`")
    missing = [k for k in ("configs_in", "written", "rejected") if k not in manifest]
    if missing:
        raise ValueError(f"{args.manifest}: no {', '.join(map(repr, missing))}: not a manifest.json of `scfdata "
                         "assemble` (rerun the assemble rule)")
    stats = None
    if args.statistics:
        stats = json_file(args.statistics, "the statistics.json written by `scfdata statistics`")
    out = build_report(manifest, stats, args.output, rejects_tsv=manifest.get("rejects"),
                       max_points=args.max_points, flags_tsv=args.flags)
    log.info("wrote %s", out)
    return 0
