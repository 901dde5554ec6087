"""`scfdata derive TARGET --settings JSON IN.h5 [MORE.h5 ...] -o OUT.h5` (one workflow step) and
`scfdata warm-up TARGET... -o FLAG` (compile the targets' numba kernels once, before the shard jobs).

The targets, their inputs and functions come from the registry in scfdata/targets.py.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from .. import targets
from ..columns import Columns
from ..h5io import read_columns, write_columns
from ..provenance import versions
from . import json_option

log = logging.getLogger("scfdata.derive")


def register(sub) -> None:
    p = sub.add_parser("derive", help="compute one derived target for a shard (workflow step)")
    p.add_argument("target", choices=list(targets.TARGETS))
    p.add_argument("inputs", nargs="+", help="the shard's base file, then the fragments of the targets it depends on")
    p.add_argument("--settings", default="{}", help="JSON: the target's `reference.<target>` settings")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=run)
    w = sub.add_parser("warm-up", help="compile a derived target's numba kernels once (workflow step)")
    w.add_argument("target", choices=list(targets.TARGETS))
    w.add_argument("--datasets", default="[]", help='JSON list: [{"settings": {...}, "mapped": [...]}, ...], '
                   "one entry per dataset that derives the target")
    w.add_argument("-o", "--output", required=True, help="flag file written when done")
    w.set_defaults(func=run_warm_up)


def union(paths) -> tuple[Columns, dict]:
    """The fields of several files describing the same configs (later files win on a name clash), and
    the provenance of the first (the base file: its inputs name the files and frames)."""
    cols, prov = read_columns(paths[0])
    for p in paths[1:]:
        frag, _ = read_columns(p)
        if not np.array_equal(frag.n_atoms, cols.n_atoms):
            raise ValueError(f"{p}: its configs do not match {paths[0]} (atom counts differ)")
        if frag.molecules or frag.n_molecules.any():
            cols.n_molecules = frag.n_molecules
        for mine, theirs in ((cols.configs, frag.configs), (cols.atoms, frag.atoms),
                             (cols.molecules, frag.molecules), (cols.masks, frag.masks)):
            mine.update(theirs)
    return cols, prov


def frame_names(cols: Columns, provenance: dict) -> list[str]:
    """'FILE frame K' of every config, from /configs/source and the base file's list of inputs."""
    paths = {i: str(inp.get("path", i)) for i, inp in enumerate(provenance.get("inputs") or [])}
    source = np.asarray(cols.configs.get("source", np.full((cols.n_configs, 2), -1)), dtype=np.int64)
    source = source.reshape(cols.n_configs, -1)
    return [f"{paths.get(int(f), f'input {int(f)}')} frame {int(k)}" for f, k in source[:, :2]]


def _log_warnings(result, caught, cols: Columns, provenance: dict, shard: str) -> None:
    """One line per config (its file and frame), then any other warning once (with the shard's name)."""
    if result.warnings:
        names = frame_names(cols, provenance)
        for c, text in sorted(result.warnings.items()):
            log.warning("%s: %s", names[c], text)
    for text in dict.fromkeys(str(w.message) for w in caught):
        log.warning("%s: %s", shard, text)


def run(args) -> int:
    t0 = time.perf_counter()
    settings = json_option(args.settings, "--settings", f"a JSON object of the reference.{args.target} settings")
    cols, base_prov = union(args.inputs)
    if cols.n_configs == 0:  # an empty shard (every frame rejected, or more shards than frames)
        write_columns(args.output, Columns(n_atoms=cols.n_atoms), provenance={"target": args.target,
                                                                             "settings": settings})
        log.info("%s: empty shard, nothing to derive", args.output)
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = targets.derive(args.target, cols, settings)
    _log_warnings(result, caught, cols, base_prov, args.inputs[0])
    provenance = {"target": args.target, "settings": settings, "masked": result.masked, "notes": result.notes,
                  "versions": versions()}
    write_columns(args.output, result.cols, provenance=provenance, derived_by=result.derived_by)
    log.info("%s: %s for %d configs in %.2f s", args.output, args.target, cols.n_configs, time.perf_counter() - t0)
    log.info("masked: %s", "; ".join(f"{k}: {v}" for k, v in result.masked.items()) or "none")
    if result.notes:
        log.info("notes: %s", "; ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}"
                                        for k, v in result.notes.items()))
    return 0


def run_warm_up(args) -> int:
    t0 = time.perf_counter()
    try:
        datasets = json.loads(args.datasets)
    except json.JSONDecodeError as e:
        raise ValueError(f"--datasets: not valid JSON ({e.msg}); expected a JSON list of "
                         '{"settings": {...}, "mapped": [...]}') from None
    if not isinstance(datasets, list) or not all(isinstance(d, dict) and "settings" in d for d in datasets):
        raise ValueError('--datasets: expected a JSON list of {"settings": {...}, "mapped": [...]}')
    done = targets.warm_up(args.target, [{"mapped": [], **d} for d in datasets])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{line}\n" for line in done))
    for line in done:
        log.info("compiled or loaded from numba's cache: %s", line)
    log.info("%s: warm-up in %.1f s", args.target, time.perf_counter() - t0)
    return 0
