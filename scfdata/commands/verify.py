"""`scfdata verify FILE.h5|DIR`: is this file (or this results directory's published set) sound?"""

from __future__ import annotations

import sys

from ..verify import verify


def register(sub) -> None:
    p = sub.add_parser("verify", help="check a file's structure, content and checksums, or a results directory's "
                                      "published set (exit 1 on any problem)")
    p.add_argument("path", help="an scfdata .h5 file, or a results directory (results/<dataset>)")
    p.add_argument("--no-checksums", action="store_true", help="skip recomputing the array checksums (faster)")
    p.set_defaults(func=run)


def run(args) -> int:
    rep = verify(args.path, checksums=not args.no_checksums)
    for line in rep.checked:
        print(f"checked {line}")
    for line in rep.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in rep.problems:
        print(f"problem: {line}", file=sys.stderr)
    if rep.problems:
        print(f"scfdata verify: {len(rep.problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    print(f"scfdata verify: {args.path}: OK")
    return 0
