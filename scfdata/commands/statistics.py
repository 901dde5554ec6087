"""`scfdata statistics-shard` (mergeable sums of one shard's training configs, and with a split file the
per-split counts of all its configs) and `scfdata statistics` (merge them into results/<ds>/statistics.json:
E0 with its diagnostics, per-atom energy and force statistics, target scales, the split report).
``scfdata statistics --e0 '{"H": -13.6}'`` (or a JSON file) supplies isolated-atom energies that take
precedence over the fit."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from .. import fields
from ..columns import ranges_index
from ..h5io import ScfdataFile, remove_stale_temporaries
from ..split import SPLIT_NAMES, missing_elements_text, read_split
from ..statistics import finalize, merge, shard_sums, split_counts
from . import json_file, json_option

log = logging.getLogger("scfdata.statistics")


def register(sub) -> None:
    p = sub.add_parser("statistics-shard", help="mergeable statistics sums of one shard (workflow step)")
    p.add_argument("files", nargs="+", help="the shard's base file, then its derived fragments")
    p.add_argument("--split", help="split .npz; only the configs of --subset are counted")
    p.add_argument("--shard", type=int, default=0, help="shard number in the split file")
    p.add_argument("--subset", default="train", choices=SPLIT_NAMES + ("all",))
    p.add_argument("-o", "--output", required=True, help="sums JSON")
    p.set_defaults(func=run_shard)

    p = sub.add_parser("statistics", help="merge shard sums into statistics.json (workflow step)")
    p.add_argument("sums", nargs="+", help="sums JSON files from `scfdata statistics-shard`")
    p.add_argument("--dataset", default=None)
    p.add_argument("--e0", default=None, help=E0_HELP)
    p.add_argument("-o", "--output", required=True, help="statistics JSON")
    p.set_defaults(func=run_merge)


def _write_json(path: str, obj: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a killed earlier writer's
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, out)


def shard_sums_of_files(paths: list[str], rows: np.ndarray | None) -> dict:
    """Sums of the configs ``rows`` (None = all) of a shard given as base file + fragments."""
    opened = [ScfdataFile(p) for p in paths]
    try:
        base = opened[0]
        r = np.arange(base.n_configs) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(r) == 0:  # an empty shard, or no config of this subset in it
            return shard_sums(np.zeros(0, np.int64), np.zeros(1, np.int64))
        a_idx = ranges_index(base.atom_ptr, r)
        counts = np.diff(base.atom_ptr)[r]
        atom_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        numbers = np.asarray(base.raw("atoms", "numbers"))[a_idx]
        owner = {}
        for f in opened:
            for name in f.field_names():
                owner.setdefault(name, f)

        def cfg_mask(name):
            m = np.asarray(owner[name].mask(name))[r]
            return m.reshape(len(r), -1).any(axis=1) if m.ndim > 1 else m

        energy = None
        if "energy" in owner:
            energy = (np.asarray(owner["energy"].read("energy"))[r], cfg_mask("energy"))
        atom_targets, entry_targets = {}, {}
        for name, f in owner.items():
            fd = fields.FIELDS[name]
            if name == "energy" or fd.dtype == "str" or not fd.target or name == "molecule":
                continue
            if fd.level == "atom":
                values = np.asarray(f.read(name))[a_idx]
                am = np.repeat(cfg_mask(name), counts)
                if name == "atomic_multipoles":
                    if "charges" not in owner:
                        atom_targets["charges"] = (values[:, 0], am)
                    entry_targets[name] = (values, am)
                    continue
                atom_targets[name] = (values, am)
            elif fd.level == "config":
                m = np.asarray(f.mask(name))[r]
                entry_targets[name] = (np.asarray(f.read(name))[r], m)
            elif fd.level == "molecule":
                m_idx = ranges_index(f.molecule_ptr, r)
                mm = np.repeat(cfg_mask(name), np.diff(f.molecule_ptr)[r])
                entry_targets[name] = (np.asarray(f.read(name))[m_idx], mm)
        return shard_sums(numbers, atom_ptr, energy=energy, atom_targets=atom_targets,
                          entry_targets=entry_targets)
    finally:
        for f in opened:
            f.close()


def run_shard(args) -> int:
    rows = None
    if args.split:
        labels, _ = read_split(args.split)
        if not 0 <= args.shard < len(labels):
            raise ValueError(f"--shard must be in 0..{len(labels) - 1}, got {args.shard}")
        if args.subset != "all":
            rows = np.flatnonzero(labels[args.shard] == SPLIT_NAMES.index(args.subset))
    sums = shard_sums_of_files(args.files, rows)
    sums["subset"] = args.subset
    if args.split:
        with ScfdataFile(args.files[0]) as base:
            shard_labels = labels[args.shard]
            if len(shard_labels) != base.n_configs:
                raise ValueError(f"{args.split}: shard {args.shard} has {len(shard_labels)} labels, {args.files[0]} "
                                 f"holds {base.n_configs} configs: rerun the split (snakemake --forcerun split)")
            ct = (base.raw("configs", "config_type") if base.exists("configs", "config_type")
                  else np.full(base.n_configs, "Default"))
            sums["split_counts"] = split_counts(base.raw("atoms", "numbers"), base.atom_ptr,
                                                np.asarray(ct, dtype=str), shard_labels)
    _write_json(args.output, sums)
    log.info("%s: sums of %d %s configs", args.output, sums["n_configs"], args.subset)
    return 0


E0_HELP = ("supplied E0s (eV), a JSON object or a JSON file: '{\"H\": -13.6, \"O\": -432.1}' (element "
           "symbols or atomic numbers); they take precedence over the least squares")


def read_e0_option(text: str | None) -> dict | None:
    """The ``--e0`` option: a JSON object, or the path of a file holding one."""
    if text is None:
        return None
    what = 'supplied E0s in eV, a JSON object such as {"H": -13.6}'
    return json_file(text, what) if Path(text).is_file() else json_option(text, "--e0", what)


def run_merge(args) -> int:
    parts = [json_file(p, "the sums JSON written by `scfdata statistics-shard`") for p in args.sums]
    subsets = sorted({p.get("subset", "all") for p in parts})
    e0 = read_e0_option(args.e0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = finalize(merge(parts), e0=e0)
    stats = {"dataset": args.dataset, "computed_on": ",".join(subsets), **stats,
             "warnings": [str(w.message) for w in caught]}
    for w in caught:
        log.warning("%s", w.message)
    missing = stats.get("split_report", {}).get("elements_missing_from_train")
    if missing:
        log.warning("split: train holds no config with %s", missing_elements_text(missing))
    _write_json(args.output, stats)
    scales = ", ".join(f"{k} {v:.4g}" for k, v in stats["scales"].items() if v is not None)
    log.info("%s: %d %s configs; scales: %s", args.output, stats["n_configs"], stats["computed_on"], scales)
    return 0

