"""`scfdata split`: seeded train/valid/test labels for the configs of every shard (workflow step)."""

from __future__ import annotations

import logging

import numpy as np

from ..h5io import ScfdataFile
from ..split import (
    BY,
    SPLIT_NAMES,
    GroupIds,
    assign_splits,
    config_formulas,
    element_counts,
    elements_missing_from_train,
    missing_elements_message,
    molecule_set_keys,
    read_quality,
    tie_duplicates,
    write_split,
)
from . import json_option

log = logging.getLogger("scfdata.split")


def register(sub) -> None:
    p = sub.add_parser("split", help="assign every config of the shards to train/valid/test (workflow step)")
    p.add_argument("shards", nargs="+", help="shard base files (from `scfdata ingest`), in shard order")
    p.add_argument("--settings", default="{}",
                   help="JSON: {valid_fraction, test_fraction, seed, by: random|config_type|composition}")
    p.add_argument("--molecules", nargs="*", default=[],
                   help="the shards' molecules fragments (same order), used by `by: composition`")
    p.add_argument("--quality", help="results/<ds>/quality.npz: every duplicate joins its first copy's group")
    p.add_argument("-o", "--output", required=True, help="split .npz (labels_<k> int8 per shard)")
    p.set_defaults(func=run)


def _groups(by: str, shards: list[str], molecules: list[str]) -> tuple[list[str], list[np.ndarray]]:
    ids = GroupIds()
    for k, path in enumerate(shards):
        with ScfdataFile(path) as f:
            if f.n_configs == 0:
                ids.add([], np.zeros(0, np.int64))
                continue
            if by == "config_type":
                names, inverse = np.unique(np.asarray(f.raw("configs", "config_type"), dtype=str),
                                           return_inverse=True)
                ids.add([str(n) for n in names], inverse.reshape(-1))
                continue
            names, inverse = config_formulas(f.raw("atoms", "numbers"), f.atom_ptr)
        if molecules:
            with ScfdataFile(molecules[k]) as m:
                if m.n_configs != len(inverse):
                    raise ValueError(f"{molecules[k]} holds {m.n_configs} configs, {path} holds {len(inverse)}")
                if m.has("molecule_formula") and m.n_molecules:
                    mkeys, minv = molecule_set_keys(m.read("molecule_formula"), m.molecule_ptr)
                    # configs without molecules keep their config formula
                    names_all = list(names) + [f"molecules:{key}" for key in mkeys]
                    use_mol = np.diff(m.molecule_ptr) > 0
                    inverse = np.where(use_mol, len(names) + minv, inverse)
                    names = names_all
        ids.add(names, inverse)
    return ids.ids()


def _elements(shards: list[str], sizes: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """(atomic numbers of the dataset, per shard the (n_configs, n_elements) bool element presence);
    appends each shard's config count to ``sizes``."""
    per_shard = []
    for path in shards:
        with ScfdataFile(path) as f:
            sizes.append(f.n_configs)
            per_shard.append(element_counts(f.raw("atoms", "numbers"), f.atom_ptr) if f.n_configs else
                             (np.zeros(0, np.int64), np.zeros((0, 0), np.int64)))
    zs = sorted({int(z) for z_shard, _ in per_shard for z in z_shard})
    out = []
    for z_shard, counts in per_shard:
        present = np.zeros((len(counts), len(zs)), dtype=bool)
        present[:, np.searchsorted(zs, z_shard)] = counts > 0
        out.append(present)
    return zs, out


def _tie(path: str, shards: list[str], sizes: list[int],
         groups: list[np.ndarray] | None) -> tuple[list[np.ndarray] | None, dict]:
    """Groups with every duplicate of the quality file joined to its first copy's; the split meta's
    ``quality`` entry (the file, configs tied, groups before and after)."""
    quality = read_quality(path, sizes, shards)
    flat = np.concatenate(groups) if groups else None
    tied_flat, n_tied = tie_duplicates(flat, np.concatenate(quality.original) if sizes else np.zeros(0, np.int64))
    before = sum(sizes) if flat is None else len(np.unique(flat))
    after = before if tied_flat is None else len(np.unique(tied_flat))
    if tied_flat is not None:
        groups = list(np.split(tied_flat, np.cumsum(sizes)[:-1]))
    log.info("split: %d configs tied to their first copy (%s): %d groups -> %d", n_tied, path, before, after)
    return groups, {"file": path, "tied": n_tied, "groups_before": before, "groups_after": after}


def run(args) -> int:
    s = json_option(args.settings, "--settings", "a JSON object of the dataset's split settings")
    unknown = set(s) - {"valid_fraction", "test_fraction", "seed", "by"}
    if unknown:
        raise ValueError(f"split settings: unknown keys {sorted(unknown)}; expected valid_fraction, "
                         "test_fraction, seed, by")
    by = s.get("by", "random")
    if by not in BY:
        raise ValueError(f"Unknown split `by` {by!r}. Must be one of {', '.join(map(repr, BY))}.")
    if args.molecules and len(args.molecules) != len(args.shards):
        raise ValueError(f"--molecules: give one file per shard ({len(args.shards)}), got {len(args.molecules)}")
    sizes = []
    zs, elements = _elements(args.shards, sizes)
    group_names, groups = (None, None) if by == "random" else _groups(by, args.shards, args.molecules)
    quality_meta = None
    if args.quality:
        groups, quality_meta = _tie(args.quality, args.shards, sizes, groups)
    labels = assign_splits(sizes, valid_fraction=float(s.get("valid_fraction", 0.0)),
                           test_fraction=float(s.get("test_fraction", 0.0)), seed=int(s.get("seed", 0)),
                           groups=groups, elements=elements)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int8)
    counts = [int((all_labels == i).sum()) for i in range(3)]
    missing = elements_missing_from_train(all_labels, np.concatenate(elements, axis=0), zs)
    meta = {"settings": {"by": by, **s}, "counts": dict(zip(SPLIT_NAMES, counts)),
            "n_groups": None if group_names is None else len(group_names), "shards": list(args.shards),
            "elements_missing_from_train": missing}
    if quality_meta is not None:
        meta["quality"] = quality_meta
    write_split(args.output, labels, meta)
    log.info("split %d configs (%s): train %d, valid %d, test %d%s", sum(sizes), by, *counts,
             "" if group_names is None else f" from {len(group_names)} groups")
    if missing:
        log.warning("split: %s", missing_elements_message(missing, by))
    if sum(sizes) and counts[0] == 0:
        log.warning("split: no config went to train (%s with %s groups): use more groups or smaller fractions",
                    by, "no" if group_names is None else len(group_names))
    wanted = [float(s.get("valid_fraction", 0)), float(s.get("test_fraction", 0))]
    for name, frac, n in zip(("valid", "test"), wanted, counts[1:]):
        if frac > 0 and n == 0 and sum(sizes):
            log.warning("split: %s_fraction=%g but no config went to %s (too few groups or configs)",
                        name, frac, name)
    return 0

