"""`scfdata check TRAIN_CONFIG.yaml FILE.h5|DIR [--suggest-weights]`: every train_schedule stage's losses
against the data.

Prints one line per loss of every stage (what it is computed from: configs with data, or model outputs
only for MACE_SCF's model-internal terms), then one line per problem. Exit 0 when every stage holds.
DIR is a results directory (results/<ds>): its train.h5 is checked. ``--suggest-weights`` also prints,
for the losses the data support, weights that make each term's initial contribution comparable (from the
target scales of statistics.json: DIR's, the one next to FILE, or ``--statistics``), as a YAML ``loss:``
block to paste into a stage.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check", help="check a MACE_SCF train_schedule's losses against an scfdata file")
    p.add_argument("train_config", help="MACE_SCF training config (YAML with train_schedule)")
    p.add_argument("file", help="an scfdata .h5 file (the training split), or a results directory (its train.h5)")
    p.add_argument("--convention", default="scfdata", choices=["scfdata", "mace_scf"],
                   help="default loss arithmetic, as WeightedLoss(..., convention=...) (default: scfdata)")
    p.add_argument("--suggest-weights", action="store_true",
                   help="also print loss weights w = 1/scale² (scales from statistics.json) as a YAML loss block")
    p.add_argument("--statistics", default=None,
                   help="statistics.json for --suggest-weights (default: the one in DIR or next to FILE)")
    p.set_defaults(func=run)


def _data_path(path: str) -> Path:
    p = Path(path)
    return p / "train.h5" if p.is_dir() else p


def _suggestion(args, data: Path) -> str:
    from ..losses import supported_losses
    from ..losses.suggest import suggest_weights, weights_yaml
    from . import json_file

    if args.convention != "scfdata":
        raise ValueError("--suggest-weights: the suggested weights are for the scfdata arithmetic (its terms are "
                         "plain masked means); drop --convention mace_scf")
    stats_path = Path(args.statistics) if args.statistics else data.parent / "statistics.json"
    if not stats_path.is_file():
        raise ValueError(f"--suggest-weights: {stats_path}: no such file; expected the statistics.json of the data "
                         "(results/<ds>/statistics.json, written by `scfdata statistics`): give --statistics PATH")
    stats = json_file(stats_path, "the statistics.json written by `scfdata statistics`")
    suggested, skipped = suggest_weights(stats, supported_losses(data))
    n = stats.get("n_configs")
    return weights_yaml(suggested, skipped, f"{stats_path} ({n} {stats.get('computed_on', 'train')} configs)")


def run(args) -> int:
    from ..losses.support import check_schedule_report

    data = _data_path(args.file)
    suggestion = _suggestion(args, data) if args.suggest_weights else None  # its errors before any output
    problems, notes = check_schedule_report(args.train_config, data, args.convention)
    for n in notes:
        print(f"{args.train_config}: {n}")
    for p in problems:
        print(f"{args.train_config}: {p}")
    if problems:
        print(f"{len(problems)} problem{'s' * (len(problems) > 1)}: fix the stages above, or the data")
    else:
        print(f"{args.train_config}: every train_schedule stage is supported by {data}")
    if suggestion is not None:
        print()
        print(suggestion)
    return 1 if problems else 0
