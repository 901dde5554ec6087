"""Seeded train/valid/test assignment of a dataset's configs, over all its shards (in shard order).

Labels are int8: 0 train, 1 valid, 2 test. ``by``:

- ``random``: each config on its own; exactly ``n_test = round(test_fraction * N)`` configs go to
  test and ``n_valid = min(round(valid_fraction * N), N - n_test)`` to valid (``round`` is Python's,
  halves to even; the cap only matters when both round up, e.g. N = 3 with 0.5/0.5 gives 0/1/2
  train/valid/test); the rest is train.
- ``config_type``: configs with the same ``config_type`` stay together.
- ``composition``: configs with the same composition stay together. The composition is the set of
  distinct molecule formulas of the config when molecules are known (so the same molecule never sits
  in train and in test), otherwise the config's Hill formula.

Groups are shuffled with the seed and filled into test, then valid, until each reaches its target
count (``n_test``, ``n_valid`` as above; a split can overshoot by at most one group, so train can end
up with fewer than its share or none); the rest is train. The assignment depends only
on the configs' order and content, not on the shard count. Not supported: stratification, weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
BY = ("random", "config_type", "composition")


def hill_formula(symbols_counts: dict[str, int]) -> str:
    """Hill order: C, H, then the rest alphabetically (all alphabetical when there is no carbon)."""
    syms = sorted(symbols_counts)
    if "C" in symbols_counts:
        syms = ["C"] + (["H"] if "H" in symbols_counts else []) + [s for s in syms if s not in ("C", "H")]
    return "".join(s + (str(symbols_counts[s]) if symbols_counts[s] != 1 else "") for s in syms)


def config_formulas(numbers: np.ndarray, atom_ptr: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(distinct formulas, per-config index into them) from atomic numbers, without a loop per config."""
    n_cfg = len(atom_ptr) - 1
    if n_cfg == 0:
        return [], np.zeros(0, np.int64)
    zs, z_idx = np.unique(np.asarray(numbers), return_inverse=True)
    cfg_of_atom = np.repeat(np.arange(n_cfg), np.diff(atom_ptr))
    counts = np.zeros((n_cfg, len(zs)), dtype=np.int64)
    np.add.at(counts, (cfg_of_atom, z_idx), 1)
    rows, inverse = np.unique(counts, axis=0, return_inverse=True)
    names = [hill_formula({chemical_symbols[z]: int(c) for z, c in zip(zs, row) if c}) for row in rows]
    return names, inverse.reshape(-1)


def molecule_set_keys(molecule_formula: np.ndarray, molecule_ptr: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(distinct keys, per-config index): a config's key is its sorted set of molecule formulas joined
    by '+'; a config without molecules gets the key ''."""
    n_cfg = len(molecule_ptr) - 1
    if n_cfg == 0:
        return [], np.zeros(0, np.int64)
    types, t_idx = np.unique(np.asarray(molecule_formula, dtype=str), return_inverse=True)
    cfg_of_mol = np.repeat(np.arange(n_cfg), np.diff(molecule_ptr))
    pairs = np.unique(cfg_of_mol.astype(np.int64) * max(1, len(types)) + t_idx.reshape(-1))
    cfg, typ = pairs // max(1, len(types)), pairs % max(1, len(types))
    # a signature per distinct set (random 64-bit values summed): equal sets, equal signatures
    vals = np.random.default_rng(12345).integers(1, 2**63, size=max(1, len(types)), dtype=np.uint64)
    sig = np.zeros(n_cfg, dtype=np.uint64)
    np.add.at(sig, cfg, vals[typ])
    uniq, first, inverse = np.unique(sig, return_index=True, return_inverse=True)
    keys = ["+".join(sorted(types[typ[cfg == c]])) for c in first]
    return keys, inverse.reshape(-1)


def assign_splits(
    n_per_shard: Sequence[int],
    *,
    valid_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    groups: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Labels (int8 per config) per shard. ``groups``: per shard, an integer group id per config
    (global over the shards; None = every config its own group). Counts: see the module docstring."""
    if not (0 <= valid_fraction <= 1 and 0 <= test_fraction <= 1 and valid_fraction + test_fraction <= 1):
        raise ValueError(
            f"split fractions must be in [0, 1] with valid_fraction + test_fraction <= 1, got "
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}"
        )
    sizes = [int(n) for n in n_per_shard]
    total = sum(sizes)
    labels = np.zeros(total, dtype=np.int8)
    n_test = round(test_fraction * total)
    n_valid = min(round(valid_fraction * total), total - n_test)
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(total)
        labels[perm[:n_test]] = TEST
        labels[perm[n_test : n_test + n_valid]] = VALID
    else:
        gid = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) if groups else np.zeros(0, np.int64)
        if len(gid) != total:
            raise ValueError(f"groups cover {len(gid)} configs, the shards hold {total}")
        uniq, inverse, counts = np.unique(gid, return_inverse=True, return_counts=True)
        order = rng.permutation(len(uniq))
        group_label = np.zeros(len(uniq), dtype=np.int8)
        filled = {TEST: 0, VALID: 0}
        for g in order:  # a loop over groups, not configs
            for lab, target in ((TEST, n_test), (VALID, n_valid)):
                if filled[lab] < target:
                    group_label[g] = lab
                    filled[lab] += int(counts[g])
                    break
        labels = group_label[inverse.reshape(-1)]
    return list(np.split(labels, np.cumsum(sizes)[:-1])) if sizes else []


class GroupIds:
    """Maps group names (strings) of every shard onto global integer ids; ids follow sorted names, so
    the assignment does not depend on the shard order in which names are first seen."""

    def __init__(self):
        self.per_shard: list[tuple[list[str], np.ndarray]] = []

    def add(self, names: list[str], inverse: np.ndarray) -> None:
        self.per_shard.append((list(names), np.asarray(inverse, dtype=np.int64)))

    def ids(self) -> tuple[list[str], list[np.ndarray]]:
        all_names = sorted({n for names, _ in self.per_shard for n in names})
        index = {n: i for i, n in enumerate(all_names)}
        out = []
        for names, inverse in self.per_shard:
            lut = np.array([index[n] for n in names], dtype=np.int64)
            out.append(lut[inverse] if len(inverse) else np.zeros(0, np.int64))
        return all_names, out


def write_split(path: str | os.PathLike, labels: Sequence[np.ndarray], meta: dict) -> Path:
    """Write labels per shard (``labels_<k>``), ``n_shards`` and ``meta`` (JSON) to an .npz, atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, n_shards=np.int64(len(labels)), meta=np.array(json.dumps(meta, sort_keys=True)),
             **{f"labels_{k}": np.asarray(lab, dtype=np.int8) for k, lab in enumerate(labels)})
    os.replace(tmp, out)
    return out


def read_split(path: str | os.PathLike) -> tuple[list[np.ndarray], dict]:
    """(labels per shard, meta) of a split .npz written by :func:`write_split`."""
    with np.load(path) as z:
        n = int(z["n_shards"])
        return [z[f"labels_{k}"] for k in range(n)], json.loads(str(z["meta"]))
