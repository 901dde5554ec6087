"""`scfdata check TRAIN_CONFIG.yaml FILE.h5`: every train_schedule stage's losses against the data.

Prints one line per loss of every stage (what it is computed from: configs with data, or model outputs
only for MACE_SCF's model-internal terms), then one line per problem. Exit 0 when every stage holds.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("check", help="check a MACE_SCF train_schedule's losses against an scfdata file")
    p.add_argument("train_config", help="MACE_SCF training config (YAML with train_schedule)")
    p.add_argument("file", help="an scfdata .h5 file (the training split)")
    p.add_argument("--convention", default="scfdata", choices=["scfdata", "mace_scf"],
                   help="default loss arithmetic, as WeightedLoss(..., convention=...) (default: scfdata)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..losses.support import check_schedule_report

    problems, notes = check_schedule_report(args.train_config, args.file, args.convention)
    for n in notes:
        print(f"{args.train_config}: {n}")
    for p in problems:
        print(f"{args.train_config}: {p}")
    if problems:
        print(f"{len(problems)} problem{'s' * (len(problems) > 1)}: fix the stages above, or the data")
        return 1
    print(f"{args.train_config}: every train_schedule stage is supported by {args.file}")
    return 0
