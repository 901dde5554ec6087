"""`scfdata derive TARGET --settings JSON IN.h5 [MORE.h5 ...] -o OUT.h5` (one workflow step)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..columns import Columns
from ..derive import DERIVERS
from ..h5io import read_columns, write_columns
from ..provenance import versions
from . import json_option

log = logging.getLogger("scfdata.derive")


def register(sub) -> None:
    p = sub.add_parser("derive", help="compute one derived target for a shard (workflow step)")
    p.add_argument("target", choices=sorted(DERIVERS))
    p.add_argument("inputs", nargs="+", help="the shard's base file, then fragments it depends on")
    p.add_argument("--settings", default="{}", help="JSON: the target's `reference.<target>` settings")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=run)


def union(paths) -> Columns:
    """The fields of several files describing the same configs (later files win on a name clash)."""
    cols, _ = read_columns(paths[0])
    for p in paths[1:]:
        frag, _ = read_columns(p)
        if not np.array_equal(frag.n_atoms, cols.n_atoms):
            raise ValueError(f"{p}: its configs do not match {paths[0]} (atom counts differ)")
        if frag.molecules or frag.n_molecules.any():
            cols.n_molecules = frag.n_molecules
        for mine, theirs in ((cols.configs, frag.configs), (cols.atoms, frag.atoms),
                             (cols.molecules, frag.molecules), (cols.masks, frag.masks)):
            mine.update(theirs)
    return cols


def run(args) -> int:
    t0 = time.perf_counter()
    settings = json_option(args.settings, "--settings", f"a JSON object of the reference.{args.target} settings")
    cols = union(args.inputs)
    if cols.n_configs == 0:  # an empty shard (every frame rejected, or more shards than frames)
        write_columns(args.output, Columns(n_atoms=cols.n_atoms), provenance={"target": args.target,
                                                                             "settings": settings})
        log.info("%s: empty shard, nothing to derive", args.output)
        return 0
    result = DERIVERS[args.target](cols, settings)
    provenance = {"target": args.target, "settings": settings, "notes": result.notes, "versions": versions()}
    write_columns(args.output, result.cols, provenance=provenance, derived_by=result.derived_by)
    log.info("%s: %s for %d configs in %.2f s; masked: %s", args.output, args.target, cols.n_configs,
             time.perf_counter() - t0, result.notes or "none")
    return 0
