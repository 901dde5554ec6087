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
up with fewer than its share or none); the rest is train. (``random`` is the same with one group per
config.) The assignment depends only on the configs' order and content, not on the shard count.

**Every element in train.** Given the configs' elements, when that fill leaves an element of the dataset
out of train, train is first given a set of groups that carries every element (the set with the fewest
configs, by a small integer program; among equals, the one the seeded order prefers), and test and valid
are filled from the other groups as above. A set is only reserved as far as the rest can still fill
test and valid: when no split with every element in train reaches the target counts, the reserved
groups carry as many elements as possible, and :func:`elements_missing_from_train` names the others
(a warning in the split log and the report). Deterministic for a seed. Not supported: stratification,
weights.

**Duplicates** (``scfdata split --quality results/<ds>/quality.npz``): every config that the quality step
found to be a copy of an earlier one (``original >= 0``) joins the group of that first copy, and groups
so joined merge (a union: a duplicate never straddles splits, whatever ``by``). Without ties the groups,
and so the labels, are exactly those of a split without the file. With ``random`` a tied set is one
group, so test and valid can overshoot their counts by at most one set. :func:`read_quality` reads and
checks that file (contract: per shard ``flags_<k>`` uint32 bitmasks over ``flag_names`` and
``original_<k>``, the global position of the first copy or -1; ``meta`` JSON).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
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


def element_counts(numbers: np.ndarray, atom_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct atomic numbers, (n_configs, n_elements) int64 atom counts per config)."""
    n_cfg = len(atom_ptr) - 1
    zs, z_idx = np.unique(np.asarray(numbers, dtype=np.int64), return_inverse=True)
    counts = np.zeros((max(n_cfg, 0), len(zs)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_cfg), np.diff(atom_ptr)), z_idx.reshape(-1)), 1)
    return zs, counts


def config_formulas(numbers: np.ndarray, atom_ptr: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(distinct formulas, per-config index into them) from atomic numbers, without a loop per config."""
    n_cfg = len(atom_ptr) - 1
    if n_cfg == 0:
        return [], np.zeros(0, np.int64)
    zs, counts = element_counts(numbers, atom_ptr)
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


def _fill(order: np.ndarray, counts: np.ndarray, n_test: int, n_valid: int, n_groups: int) -> np.ndarray:
    """Group labels: groups in ``order`` go to test until it holds ``n_test`` configs, then to valid
    until ``n_valid``; every other group (also those not in ``order``) is train."""
    label = np.full(n_groups, TRAIN, dtype=np.int8)
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) if len(order) else np.zeros(0, np.int64)
    to_test = before < n_test
    label[order[to_test]] = TEST
    rest = order[~to_test]
    before_rest = before[~to_test] - (before[~to_test][0] if len(rest) else 0)
    label[rest[before_rest < n_valid]] = VALID
    return label


def _group_elements(inverse: np.ndarray, config_elements: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, n_elements) bool: the group holds a config with the element."""
    by_group = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_group], np.arange(n_groups))
    return np.logical_or.reduceat(config_elements[by_group], starts, axis=0)


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """An id per row of a bool matrix, equal for equal rows (rows packed into 64-bit words first: a
    sort of void rows is ~50x slower)."""
    packed = np.packbits(rows, axis=1)
    width = -(-packed.shape[1] // 8) * 8
    words = np.zeros((len(rows), width), dtype=np.uint8)
    words[:, : packed.shape[1]] = packed
    words = words.view(np.uint64)
    _, ids = np.unique(words[:, 0] if words.shape[1] == 1 else words, axis=None if words.shape[1] == 1 else 0,
                       return_inverse=True)
    return ids.reshape(-1)


def covering_groups(group_elements: np.ndarray, counts: np.ndarray, order: np.ndarray, budget: int) -> np.ndarray:
    """Indices of groups that carry as many elements as possible with at most ``budget`` configs, and
    among those the fewest configs (an exact integer program; ties broken by the position in ``order``).

    Only the smallest group of each distinct element set (the first in ``order`` among equals) is a
    candidate, so the program has at most min(groups, distinct element sets) variables.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_groups, n_el = group_elements.shape
    if n_groups == 0 or n_el == 0:
        return np.zeros(0, np.int64)
    position = np.empty(n_groups, dtype=np.int64)
    position[order] = np.arange(n_groups)
    set_of = _row_ids(group_elements)
    pick = np.lexsort((position, counts, set_of))  # per set: fewest configs, then first in order
    first = pick[np.concatenate([[True], set_of[pick][1:] != set_of[pick][:-1]])]
    cand = first[np.argsort(position[first])]  # candidates in the seeded order
    a = group_elements[cand].T.astype(np.float64)  # (n_el, n_cand)
    w = counts[cand].astype(np.float64)
    n_c = len(cand)
    big = float(counts.sum()) + 1.0  # one more element is worth more than any number of configs
    c = np.concatenate([w, np.full(n_el, -big)])
    cover = LinearConstraint(np.hstack([-a, np.eye(n_el)]), -np.inf, 0.0)  # y_e <= sum of groups with e
    size = LinearConstraint(np.concatenate([w, np.zeros(n_el)])[None, :], -np.inf, float(budget))
    res = milp(c, constraints=[cover, size], integrality=np.ones(n_c + n_el), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0, "time_limit": 60.0})
    if res.x is None:
        return np.zeros(0, np.int64)
    return np.sort(cand[res.x[:n_c] > 0.5])


def assign_splits(
    n_per_shard: Sequence[int],
    *,
    valid_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    groups: Sequence[np.ndarray] | None = None,
    elements: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Labels (int8 per config) per shard. ``groups``: per shard, an integer group id per config
    (global over the shards; None = every config its own group). ``elements``: per shard, a
    (n_configs, n_elements) bool matrix (the same element columns in every shard) of the elements
    each config holds; with it, train is given every element when the target counts allow (see the
    module docstring). Counts: see the module docstring."""
    if not (0 <= valid_fraction <= 1 and 0 <= test_fraction <= 1 and valid_fraction + test_fraction <= 1):
        raise ValueError(
            f"split fractions must be in [0, 1] with valid_fraction + test_fraction <= 1, got "
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}"
        )
    sizes = [int(n) for n in n_per_shard]
    total = sum(sizes)
    n_test = round(test_fraction * total)
    n_valid = min(round(valid_fraction * total), total - n_test)
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse, counts = np.arange(total), np.ones(total, dtype=np.int64)
    else:
        gid = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) if groups else np.zeros(0, np.int64)
        if len(gid) != total:
            raise ValueError(f"groups cover {len(gid)} configs, the shards hold {total}")
        _, inverse, counts = np.unique(gid, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
    n_groups = len(counts)
    order = rng.permutation(n_groups)
    group_label = _fill(order, counts, n_test, n_valid, n_groups)
    if elements is not None and total:
        cfg_el = np.concatenate([np.asarray(e, dtype=bool) for e in elements], axis=0)
        if len(cfg_el) != total:
            raise ValueError(f"elements cover {len(cfg_el)} configs, the shards hold {total}")
        g_el = _group_elements(inverse, cfg_el, n_groups)
        in_train = g_el[group_label == TRAIN].any(axis=0)
        if not in_train.all():
            reserved = covering_groups(g_el, counts, order, total - n_test - n_valid)
            keep = np.ones(n_groups, dtype=bool)
            keep[reserved] = False
            retry = _fill(order[keep[order]], counts, n_test, n_valid, n_groups)
            if g_el[retry == TRAIN].any(axis=0).sum() > in_train.sum():
                group_label = retry
    labels = group_label[inverse]
    return list(np.split(labels, np.cumsum(sizes)[:-1])) if sizes else []


def elements_missing_from_train(labels: np.ndarray, config_elements: np.ndarray,
                                atomic_numbers: Sequence[int]) -> dict[str, list[str]]:
    """Element symbol -> the splits (valid, test) that hold it, for every element train lacks."""
    labels = np.asarray(labels)
    held = np.stack([np.asarray(config_elements, dtype=bool)[labels == s].any(axis=0) for s in (TRAIN, VALID, TEST)])
    return {chemical_symbols[int(z)]: [SPLIT_NAMES[s] for s in (VALID, TEST) if held[s, j]]
            for j, z in enumerate(atomic_numbers) if not held[TRAIN, j] and held[1:, j].any()}


def missing_elements_text(missing: dict[str, list[str]]) -> str:
    """``C (in valid and test); Na (in test)``."""
    return "; ".join(f"{el} (in {' and '.join(splits)})" for el, splits in missing.items())


def missing_elements_message(missing: dict[str, list[str]], by: str) -> str:
    """One line naming each element that valid/test hold and train lacks."""
    return (f"train holds no config with {missing_elements_text(missing)}: a model trained on it never sees "
            f"{'this element' if len(missing) == 1 else 'these elements'}; no split with every element in train "
            f"reaches the valid/test fractions with `by: {by}`: lower valid_fraction/test_fraction"
            + ("" if by == "random" else ", or split `by: random`") + ", or add configs with these elements")


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


# ------------------------------------------------------------------------------------------------
# quality flags (results/<ds>/quality.npz, written by the quality step): duplicates tie groups,
# `quality.drop` turns flags into rejects at assemble
# ------------------------------------------------------------------------------------------------

QUALITY_FLAGS = ("duplicate", "near_duplicate", "energy_outlier", "force_outlier", "charge_renormalised",
                 "dipole_disagreement")
_RERUN = "a stale or damaged file: rerun the workflow (its quality step rewrites it)"


@dataclass
class Quality:
    """The flags of a dataset's configs, per shard (in shard order)."""

    path: str
    flag_names: list[str]
    flags: list[np.ndarray]  # uint32 bitmask per config, bit i = flag_names[i]
    original: list[np.ndarray]  # int64 global position of the first copy, -1 when not a copy
    meta: dict

    @property
    def settings(self) -> dict:
        settings = self.meta.get("settings")
        return settings if isinstance(settings, dict) else {}

    def straddling(self, labels: Sequence[np.ndarray]) -> int:
        """How many copies sit in another split than their first copy (labels per shard; < 0 = not
        written, not counted): 0 for a split made with this file (``scfdata split --quality``)."""
        lab = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        orig = np.concatenate(self.original) if self.original else np.zeros(0, np.int64)
        tied = np.flatnonzero(orig >= 0)
        a, b = lab[tied], lab[orig[tied]]
        return int(((a >= 0) & (b >= 0) & (a != b)).sum())

    def known(self) -> list[str]:
        return list(self.flag_names) + [n for n in QUALITY_FLAGS if n not in self.flag_names]

    def mask_of(self, names: Sequence[str], option: str = "drop") -> int:
        """The bitmask of ``names``; a name that is no known flag is a ValueError listing the known ones
        (a known flag that this file does not carry has no bit: nothing carries it)."""
        unknown = [n for n in names if n not in self.known()]
        if unknown:
            raise ValueError(f"{option}: unknown flag(s) {', '.join(map(repr, unknown))}; known flags: "
                             f"{', '.join(self.known())}")
        return sum(1 << self.flag_names.index(n) for n in set(names) if n in self.flag_names)

    def counts(self, flags: np.ndarray) -> dict[str, int]:
        """Flag name -> how many of ``flags`` (bitmasks) carry it, for every flag of the file."""
        flags = np.asarray(flags, dtype=np.uint32)
        bits = (flags[:, None] >> np.arange(len(self.flag_names), dtype=np.uint32)) & 1
        return dict(zip(self.flag_names, bits.sum(axis=0).astype(int).tolist()))


def _quality_array(z, path: str, key: str) -> np.ndarray:
    if key not in z.files:
        raise ValueError(f"{path}: no array {key!r}: {_RERUN}")
    try:
        return z[key]
    except ValueError as e:  # an object array (needs pickle)
        raise ValueError(f"{path}: array {key!r} is not plain data ({e}): {_RERUN}") from None


def _check_original(path: str, k: int, original: np.ndarray, offset: int) -> None:
    """-1, or the global position of an earlier config."""
    pos = offset + np.arange(len(original))
    bad = np.flatnonzero((original < -1) | (original >= pos))
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"{path}: original_{k}[{j}] = {int(original[j])}: expected -1 or the global position of "
                         f"an earlier config (0..{int(pos[j]) - 1}): {_RERUN}")


def read_quality(path: str | os.PathLike, sizes: Sequence[int], shards: Sequence[str] = ()) -> Quality:
    """Read and check a quality.npz against the shards' config counts ``sizes`` (shard paths ``shards``
    only name them in errors). Any mismatch is a one-line ValueError."""
    path = str(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a quality .npz ({e}): {_RERUN}") from None
    with z:
        names = _quality_array(z, path, "flag_names")
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) > 32:
            raise ValueError(f"{path}: flag_names: expected a 1-d str array of at most 32 names, found dtype "
                             f"{names.dtype} with shape {names.shape}: {_RERUN}")
        n_shards = len({m.group(1) for f in z.files if (m := re.fullmatch(r"flags_(\d+)", f))})
        if n_shards != len(sizes):
            raise ValueError(f"{path}: flags for {n_shards} shards, the dataset has {len(sizes)} shards: {_RERUN}")
        try:
            meta = json.loads(str(_quality_array(z, path, "meta")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: meta is not JSON ({e}): {_RERUN}") from None
        flags, original, offset = [], [], 0
        for k, n in enumerate(sizes):
            where = f"shard {k}" + (f" ({shards[k]})" if k < len(shards) else "")
            f_k = _quality_array(z, path, f"flags_{k}")
            o_k = _quality_array(z, path, f"original_{k}")
            for key, a, kind in ((f"flags_{k}", f_k, "ui"), (f"original_{k}", o_k, "i")):
                if a.ndim != 1 or a.dtype.kind not in kind or len(a) != n:
                    raise ValueError(f"{path}: {key}: expected {n} integers (the configs of {where}), found dtype "
                                     f"{a.dtype} with shape {a.shape}: {_RERUN}")
            if len(f_k) and (f_k.astype(np.int64) >> len(names)).any():
                raise ValueError(f"{path}: flags_{k} sets bits beyond the {len(names)} flag_names: {_RERUN}")
            _check_original(path, k, o_k.astype(np.int64), offset)
            flags.append(f_k.astype(np.uint32))
            original.append(o_k.astype(np.int64))
            offset += n
    return Quality(path, [str(n) for n in names], flags, original, meta if isinstance(meta, dict) else {})


def tie_duplicates(groups: np.ndarray | None, original: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(group id per config, number of configs tied) with every config whose ``original`` (global
    position, -1 = none) is >= 0 in one group with that config; groups so linked merge (connected
    components), each keeping the smallest id of its members, so without ties the ids are unchanged.
    ``groups`` None = every config its own group (returned as None when nothing is tied)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    original = np.asarray(original, dtype=np.int64)
    tied = np.flatnonzero(original >= 0)
    if not tied.size:
        return groups, 0
    gid = np.arange(len(original)) if groups is None else np.asarray(groups, dtype=np.int64)
    uniq, inv = np.unique(gid, return_inverse=True)
    inv = inv.reshape(-1)
    n = len(uniq)
    graph = coo_matrix((np.ones(tied.size), (inv[tied], inv[original[tied]])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return uniq[smallest[comp]][inv], int(tied.size)
