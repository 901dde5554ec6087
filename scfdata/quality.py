"""Quality flags of a dataset: duplicates, near duplicates, outliers, renormalised charges, dipole
disagreements (pure numpy: arrays in, arrays out; the I/O is in scfdata/commands/quality.py).

Two steps, so that the flags of a dataset need memory bounded by one shard (plus a few numbers per config):

- :func:`shard_sketch` reduces one shard to a small per-config sketch: a content hash, a composition
  hash, the exact-duplicate key and the near-duplicate key (below), per element the largest |F| of the
  config and its atom, a sparse histogram of log10 |F| per element (mergeable: counts add), the element
  counts and energy of each config, and the per-config values of the local flags.
- the dataset step (:func:`candidate_pairs`, :func:`pair_deviations`, :func:`resolve_duplicates`,
  :func:`energy_flags`, :func:`force_flags`) merges the sketches in shard order.

Duplicates. ``duplicate``: same species in the same order, same pbc, same total charge and external
field (when given), same cell (compared for periodic
configs only: the cell of an open-boundary config has no effect on any target) and every atom within
``EXACT_TOLERANCE`` (1e-6 Å). ``near_duplicate``: same species in the same order, same pbc (cells within
the tolerance when periodic), every atom within ``near_duplicate_tolerance`` after removing the
translation (the centroids are aligned). Keys: f = (1/n) Σ_i a_i·r_i with fixed pseudo-random unit vectors
a_i per atom index changes by at most the largest atom displacement between two configs, so two configs
within a tolerance t have f within t; f rounded to cells of size >= t puts a pair into the same or a
neighbouring cell, and the dataset step looks in both neighbours (no rounding-boundary miss). The exact key
is one such f of the raw positions (cell 2e-6 Å), the near key three of the centred positions (cells of
the tolerance, 27 neighbours). Every candidate pair is checked exactly on the positions. Configs with
bit-identical content are first collapsed by the content hash, so a thousand copies of one config cost
a thousand checks, not a million. Expected time O(N) for data whose distinct configs are not packed
within the tolerance; a periodic config whose atoms were wrapped into the cell differently is not
matched (positions are compared as stored).

A config that matches an earlier config exactly is a ``duplicate`` of that config's first copy (exact
matches chain: they are within 1e-6 Å each). A near duplicate is compared with first copies only (configs
that are neither duplicate nor near duplicate), so a slowly moving trajectory does not chain into one group.

Outliers. ``energy_outlier``: (E − Σ_z n_z E0_z)/N after an E0 least-squares fit (statistics.py's mergeable
QR sums; refitted once without the configs beyond the threshold, so one absurd energy does not move every
E0), more than ``outlier_sigma`` robust sigmas (1.4826 × MAD) from the median. ``force_outlier``: a config
whose largest |F| on an element lies more than ``outlier_sigma`` robust sigmas above that element's median
|F| over the dataset (median and MAD from the merged histograms, bins of 0.2 % in |F|). Robust sigmas are
at least ``SIGMA_FLOOR`` (so that exact data do not flag rounding noise); fewer than ``MIN_SAMPLES`` values
give no outlier flag. ``charge_renormalised``: the ingest field ``charge_renormalisation`` (total_charge −
Σq before the shift) is non-zero. ``dipole_disagreement``: open-boundary configs (pbc FFF) with a DFT dipole
(per-component mask) and charges or atomic multipoles: |μ_DFT − (Σ q_i r_i + Σ p_i)| over the present
components above ``dipole_tolerance`` × max(|μ_DFT|, 1 e·Å), about the origin (0, 0, 0) (FHI-aims' convention
for charged clusters). Masked or absent targets never flag.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

from .columns import ptr_from_counts, ranges_index
from .reference.dipoles import compute_dipoles
from .statistics import finalize, merge, shard_sums

FLAG_NAMES = ("duplicate", "near_duplicate", "energy_outlier", "force_outlier", "charge_renormalised",
              "dipole_disagreement")
BIT = {name: np.uint32(1 << i) for i, name in enumerate(FLAG_NAMES)}

DEFAULTS = {"enabled": True, "near_duplicate_tolerance": 0.01, "outlier_sigma": 8.0, "dipole_tolerance": 0.3,
            "drop": []}
EXACT_TOLERANCE = 1e-6  # Å
MAD_SCALE = 1.4826  # robust sigma = 1.4826 × MAD (a normal distribution's sigma)
MIN_SAMPLES = 20  # fewer values give no outlier flag
SIGMA_FLOOR = {"energy": 1e-6, "forces": 1e-6}  # eV/atom, eV/Å
DIPOLE_FLOOR = 1.0  # e·Å
#: log10 |F| histogram: bins of 0.2 % from 1e-8 to 1e8 eV/Å (smaller and larger values in the end bins)
LOG_F_MIN, LOG_F_MAX = -8.0, 8.0
LOG_F_STEP = math.log10(1.002)
N_F_BINS = int(math.ceil((LOG_F_MAX - LOG_F_MIN) / LOG_F_STEP))
_B = np.uint64(1 << 21)  # radix of the packed 3-d near-duplicate cell index
_NEAR_OFFSETS = np.array([d0 + (1 << 21) * d1 + (1 << 42) * d2 for d0 in (-1, 0, 1) for d1 in (-1, 0, 1)
                          for d2 in (-1, 0, 1)], dtype=np.int64).astype(np.uint64)
_EXACT_OFFSETS = np.array([-1, 0, 1], dtype=np.int64).astype(np.uint64)


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def check_settings(settings: Mapping | None) -> dict:
    """The quality settings with defaults; a bad value is a ValueError naming ``quality.<key>``."""
    s = {**DEFAULTS, **(settings or {})}
    unknown = sorted(set(s) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"quality: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(DEFAULTS))}")
    if not isinstance(s["enabled"], bool):
        raise ValueError(f"quality.enabled: expected true or false, found {s['enabled']!r}")
    for key, lo, hi, strict in (("near_duplicate_tolerance", 0.0, 10.0, False), ("outlier_sigma", 0.0, 1000.0, True),
                                ("dipole_tolerance", 0.0, 1000.0, True)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v > hi or v < lo or (strict and v == lo):
            raise ValueError(f"quality.{key}: expected a number {'>' if strict else '>='} {lo:g} and <= {hi:g}, "
                             f"found {v!r}")
        s[key] = float(v)
    drop = s["drop"]
    if not isinstance(drop, (list, tuple)) or not all(isinstance(d, str) for d in drop):
        raise ValueError(f"quality.drop: expected a list of flag names, found {drop!r}")
    for d in drop:
        if d not in FLAG_NAMES:
            close = difflib.get_close_matches(d, FLAG_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"quality.drop: unknown flag {d!r}{hint}; known flags: {', '.join(FLAG_NAMES)}")
    s["drop"] = list(drop)
    return s


# ------------------------------------------------------------------------------------------------
# hashing and keys
# ------------------------------------------------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _segment_sum(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Sums of ``values`` (any dtype; uint64 wraps) over the segments of ``ptr`` (empty segments: 0)."""
    out = np.zeros((len(ptr) - 1,) + values.shape[1:], dtype=values.dtype)
    nonempty = np.diff(ptr) > 0
    if nonempty.any():
        out[nonempty] = np.add.reduceat(values, ptr[:-1][nonempty], axis=0)
    return out


def _atom_index(ptr: np.ndarray) -> np.ndarray:
    """Index of each atom within its config."""
    counts = np.diff(ptr)
    return np.arange(int(ptr[-1]), dtype=np.int64) - np.repeat(ptr[:-1], counts)


def _directions(idx: np.ndarray, k: int) -> np.ndarray:
    """Fixed pseudo-random unit vectors (n, 3), one per atom index and feature ``k``."""
    u = _mix(idx.astype(np.uint64) * np.uint64(8) + np.uint64(k))
    v = _mix(u)
    z = (u >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 * 2.0 - 1.0
    phi = (v >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 * 2.0 * np.pi
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _pbc_bits(pbc: np.ndarray) -> np.ndarray:
    return (np.asarray(pbc, dtype=bool).reshape(-1, 3) * np.array([1, 2, 4])).sum(axis=1).astype(np.uint64)


def composition_keys(numbers: np.ndarray, ptr: np.ndarray, pbc: np.ndarray, state: np.ndarray | None = None
                     ) -> np.ndarray:
    """Hash of (species in order, atom count, pbc, state) per config. ``state`` (n, k): per-config values
    that must also agree, NaN where absent (the total charge and external field: the same geometry in
    another charge state or field is another calculation), compared to 1e-6."""
    with np.errstate(over="ignore", invalid="ignore"):
        idx = _atom_index(ptr).astype(np.uint64)
        h = _mix(idx * np.uint64(128) + np.asarray(numbers, dtype=np.uint64))
        n = np.diff(ptr).astype(np.uint64)
        out = _mix(_segment_sum(h, ptr) + _mix(n) + _mix(_pbc_bits(pbc) + np.uint64(1 << 40)))
        if state is not None:
            st = np.asarray(state, dtype=np.float64)
            st = st[:, None] if st.ndim == 1 else st
            q = np.where(np.isfinite(st), np.round(st * 1e6), -2.0 ** 62).astype(np.int64).astype(np.uint64)
            for j in range(st.shape[1]):
                out = _mix(out + q[:, j])
        return out


def content_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray, cell: np.ndarray,
                 pbc: np.ndarray) -> np.ndarray:
    """Hash of the exact bits of the positions (and of the cell of periodic configs), per config."""
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(positions, dtype=np.float64).view(np.uint64).reshape(-1, 3)
        idx = _atom_index(ptr).astype(np.uint64)
        h = _mix(_mix(_mix(bits[:, 0] + idx) + bits[:, 1]) + bits[:, 2])
        cb = np.ascontiguousarray(cell, dtype=np.float64).view(np.uint64).reshape(-1, 9)
        ch = np.zeros(len(comp), dtype=np.uint64)
        for j in range(9):
            ch = _mix(ch + cb[:, j])
        periodic = np.asarray(pbc, dtype=bool).reshape(-1, 3).any(axis=1)
        return _mix(comp + _segment_sum(h, ptr) + np.where(periodic, ch, np.uint64(0)))


def _features(positions: np.ndarray, ptr: np.ndarray, ks: Sequence[int], centred: bool) -> np.ndarray:
    """(n_configs, len(ks)): (1/n) Σ_i a_ik·r_i (r_i minus the config's centroid when ``centred``)."""
    pos = np.asarray(positions, dtype=np.float64)
    n = np.maximum(np.diff(ptr), 1).astype(np.float64)
    if centred:
        centre = _segment_sum(pos, ptr) / n[:, None]
        pos = pos - np.repeat(centre, np.diff(ptr), axis=0)
    idx = _atom_index(ptr)
    out = np.empty((len(n), len(ks)))
    for c, k in enumerate(ks):
        out[:, c] = _segment_sum((_directions(idx, k) * pos).sum(axis=1), ptr) / n
    return out


def _cell_index(values: np.ndarray, size: float) -> np.ndarray:
    return np.floor(values / size).astype(np.int64).astype(np.uint64)


def exact_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Composition hash + the cell (size 2e-6 Å) of one raw-position feature; a pair within 1e-6 Å per
    atom has keys that differ by at most 1."""
    with np.errstate(over="ignore"):
        return _mix(comp ^ np.uint64(0x5EED)) + _cell_index(_features(positions, ptr, [0], False)[:, 0],
                                                             2 * EXACT_TOLERANCE)


def near_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray, tolerance: float) -> np.ndarray:
    """Composition hash + the packed 3-d cell (size ``tolerance``) of three centred-position features."""
    size = tolerance * (1 + 1e-6) + 1e-12
    c = _cell_index(_features(positions, ptr, [1, 2, 3], True), size)
    with np.errstate(over="ignore"):
        return _mix(comp ^ np.uint64(0xC0FFEE)) + c[:, 0] + _B * c[:, 1] + _B * _B * c[:, 2]


# ------------------------------------------------------------------------------------------------
# the per-shard sketch
# ------------------------------------------------------------------------------------------------
def _f_bins(fmag: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        lg = np.log10(fmag)
    return np.clip(np.floor((lg - LOG_F_MIN) / LOG_F_STEP), 0, N_F_BINS - 1).astype(np.int64)


def shard_sketch(numbers, positions, ptr, cell, pbc, *, tolerance: float, state=None, energy=None, forces=None,
                 dipole=None, charges=None, renormalisation=None) -> dict:
    """The sketch of one shard (a dict of arrays, for ``np.savez``).

    numbers (n_atoms,), positions (n_atoms, 3), ptr (n_configs + 1,), cell (n, 3, 3), pbc (n, 3);
    energy: (values (n,), mask (n,)); forces: (values (n_atoms, 3), mask (n,)); dipole: (values (n, 3),
    mask (n, 3)); charges: (atomic multipoles (n_atoms, K) or charges (n_atoms,), mask (n,));
    renormalisation: (values (n,), mask (n,)). ``tolerance``: near_duplicate_tolerance (0: no near keys).
    state: (n, k) values duplicates must share, NaN where absent (:func:`composition_keys`).
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    ptr = np.asarray(ptr, dtype=np.int64)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    n_cfg = len(ptr) - 1
    counts = np.diff(ptr)
    comp = composition_keys(numbers, ptr, pbc, state)
    elements = np.unique(numbers)
    el_idx = np.searchsorted(elements, numbers)
    cfg_of_atom = np.repeat(np.arange(n_cfg), counts)
    x = np.zeros((n_cfg, len(elements)), dtype=np.int32)
    np.add.at(x, (cfg_of_atom, el_idx), 1)
    out = {
        "n_atoms": counts, "comp": comp, "elements": elements, "element_counts": x,
        "content": content_keys(comp, positions, ptr, cell, pbc),
        "exact_key": exact_keys(comp, positions, ptr),
        "near_key": near_keys(comp, positions, ptr, tolerance) if tolerance > 0 else np.zeros(n_cfg, np.uint64),
    }
    e, em = (energy if energy is not None else (np.zeros(n_cfg), np.zeros(n_cfg, bool)))
    out["energy"], out["energy_mask"] = np.asarray(e, dtype=np.float64), np.asarray(em, dtype=bool)
    # forces: per config and element the largest |F| and its atom; per element a sparse histogram
    fmax = np.full((n_cfg, len(elements)), np.nan)
    fatom = np.full((n_cfg, len(elements)), -1, dtype=np.int32)
    hist = np.zeros((0, 3), dtype=np.int64)  # rows (element, bin, count)
    if forces is not None and np.asarray(forces[1]).any():
        am = np.repeat(np.asarray(forces[1], dtype=bool), counts)
        fmag = np.linalg.norm(np.asarray(forces[0], dtype=np.float64), axis=1)[am]
        c, z, a = cfg_of_atom[am], el_idx[am], _atom_index(ptr)[am]
        order = np.lexsort((-fmag, z, c))  # per (config, element) the largest first
        first = np.ones(len(order), dtype=bool)
        first[1:] = (c[order][1:] != c[order][:-1]) | (z[order][1:] != z[order][:-1])
        sel = order[first]
        fmax[c[sel], z[sel]] = fmag[sel]
        fatom[c[sel], z[sel]] = a[sel]
        keys, cnt = np.unique(z * N_F_BINS + _f_bins(fmag), return_counts=True)
        hist = np.column_stack([elements[keys // N_F_BINS], keys % N_F_BINS, cnt]).astype(np.int64)
    out.update(force_max=fmax, force_atom=fatom, force_hist=hist)
    out["dipole_error"], out["dipole_norm"] = _dipole_errors(positions, ptr, pbc, dipole, charges)
    renorm = np.zeros(n_cfg)
    if renormalisation is not None:
        v, m = np.asarray(renormalisation[0], dtype=np.float64), np.asarray(renormalisation[1], dtype=bool)
        renorm = np.where(m & np.isfinite(v), v, 0.0)
    out["charge_renormalisation"] = renorm
    return out


def _dipole_errors(positions, ptr, pbc, dipole, charges) -> tuple[np.ndarray, np.ndarray]:
    """Per config |μ_DFT − μ(q, p)| over the present components and |μ_DFT| there (NaN: not compared)."""
    n_cfg = len(ptr) - 1
    err, norm = np.full(n_cfg, np.nan), np.full(n_cfg, np.nan)
    if dipole is None or charges is None:
        return err, norm
    dm = np.asarray(dipole[1], dtype=bool).reshape(n_cfg, 3)
    ok = dm.any(axis=1) & np.asarray(charges[1], dtype=bool) & ~pbc.any(axis=1)
    if not ok.any():
        return err, norm
    rows = np.flatnonzero(ok)
    a_idx = ranges_index(ptr, rows)
    mult = np.asarray(charges[0], dtype=np.float64)[a_idx]
    sub_ptr = ptr_from_counts(np.diff(ptr)[rows])
    mu = compute_dipoles(np.asarray(positions, dtype=np.float64)[a_idx], mult, sub_ptr)
    ref = np.asarray(dipole[0], dtype=np.float64).reshape(n_cfg, 3)[rows]
    m = dm[rows]
    err[rows] = np.sqrt((np.where(m, ref - mu, 0.0) ** 2).sum(axis=1))
    norm[rows] = np.sqrt((np.where(m, ref, 0.0) ** 2).sum(axis=1))
    return err, norm


# ------------------------------------------------------------------------------------------------
# the dataset step: duplicates
# ------------------------------------------------------------------------------------------------
def first_of_content(content: np.ndarray) -> np.ndarray:
    """Per config the lowest position with the same content hash (itself for the first)."""
    _, first, inverse = np.unique(content, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def _expand_ranges(lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Concatenated ``range(lo[r], lo[r] + n[r])`` without a Python loop."""
    return np.arange(int(n.sum()), dtype=np.int64) + np.repeat(lo - ptr_from_counts(n)[:-1], n)


def candidate_pairs(keys: np.ndarray, offsets: np.ndarray, chunk: int = 1 << 16):
    """Pairs (i, j), j < i (positions in ``keys``), whose keys differ by one of ``offsets`` (uint64,
    wrapping); yielded in chunks of query configs so that memory stays bounded."""
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    for s in range(0, len(keys), chunk):
        q = np.arange(s, min(s + chunk, len(keys)), dtype=np.int64)
        ii, jj = [], []
        for d in offsets:
            with np.errstate(over="ignore"):
                target = keys[q] + d
            lo = np.searchsorted(sk, target, "left")
            n = np.searchsorted(sk, target, "right") - lo
            if n.any():
                j = order[_expand_ranges(lo, n)]
                i = np.repeat(q, n)
                keep = j < i
                ii.append(i[keep])
                jj.append(j[keep])
        if ii:
            yield np.concatenate(ii), np.concatenate(jj)


def pair_deviations(pos_a, pos_b, numbers_a, numbers_b, ptr, cell_a, cell_b, pbc_a, pbc_b):
    """Per pair of configs with the same atom counts (atoms of pair p at ``ptr[p]:ptr[p+1]`` in both
    position arrays): (same species and pbc, largest |Δr|, largest |Δr| after aligning the centroids,
    largest |Δcell| entry (0 for open-boundary pairs))."""
    ptr = np.asarray(ptr, dtype=np.int64)
    n_pair = len(ptr) - 1
    counts = np.diff(ptr)
    d = np.asarray(pos_a, dtype=np.float64) - np.asarray(pos_b, dtype=np.float64)
    same = _segment_sum((np.asarray(numbers_a) != np.asarray(numbers_b)).astype(np.int64), ptr) == 0
    pa, pb = np.asarray(pbc_a, bool).reshape(-1, 3), np.asarray(pbc_b, bool).reshape(-1, 3)
    same &= (pa == pb).all(axis=1)
    raw = _segment_max(np.linalg.norm(d, axis=1), ptr)
    shift = _segment_sum(d, ptr) / np.maximum(counts, 1)[:, None]
    centred = _segment_max(np.linalg.norm(d - np.repeat(shift, counts, axis=0), axis=1), ptr)
    dc = np.abs(np.asarray(cell_a, np.float64).reshape(n_pair, 9) - np.asarray(cell_b, np.float64).reshape(n_pair, 9))
    dcell = np.where(pa.any(axis=1), dc.max(axis=1, initial=0.0), 0.0)
    return same, raw, centred, dcell


def _segment_max(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ptr) - 1)
    nonempty = np.diff(ptr) > 0
    if nonempty.any():
        out[nonempty] = np.maximum.reduceat(values, ptr[:-1][nonempty])
    return out


def resolve_duplicates(n: int, first: np.ndarray, pairs: Sequence[tuple[np.ndarray, ...]]):
    """Flags of duplicates from verified pairs.

    n: configs; first: per config the first config of its bit-identical content (itself if none);
    pairs: (i, j, exact, near, deviation) arrays of checked candidate pairs (j < i; ``exact``: within
    1e-6 Å; ``near``: within the near-duplicate tolerance after aligning the centroids).
    Returns (kind (n,) int8: 0 none, 1 duplicate, 2 near duplicate; original (n,) int64 (-1 for none);
    deviation (n,) float64, the near duplicate's largest centred |Δr|).
    """
    kind = np.zeros(n, dtype=np.int8)
    original = np.full(n, -1, dtype=np.int64)
    deviation = np.zeros(n)
    copies = np.flatnonzero(first != np.arange(n))
    i_all = [copies] + [p[0] for p in pairs]
    j_all = [first[copies]] + [p[1] for p in pairs]
    ex_all = [np.ones(len(copies), bool)] + [p[2] for p in pairs]
    nr_all = [np.ones(len(copies), bool)] + [p[3] for p in pairs]
    dv_all = [np.zeros(len(copies))] + [p[4] for p in pairs]
    i, j = np.concatenate(i_all), np.concatenate(j_all)
    ex, nr, dv = np.concatenate(ex_all), np.concatenate(nr_all), np.concatenate(dv_all)
    keep = ex | nr
    i, j, ex, dv = i[keep], j[keep], ex[keep], dv[keep]
    order = np.lexsort((j, ~ex, i))  # per config: exact matches first, each by position
    i, j, ex, dv = i[order].tolist(), j[order].tolist(), ex[order].tolist(), dv[order].tolist()
    p = 0
    while p < len(i):  # one step per config with a match (sequential: a first copy must be settled first)
        q = p
        while q < len(i) and i[q] == i[p]:
            q += 1
        c = i[p]
        roots = [int(original[j[r]]) if kind[j[r]] else j[r] for r in range(p, q) if ex[r]]
        if roots:
            kind[c], original[c] = 1, min(roots)
        else:
            for r in range(p, q):
                if kind[j[r]] == 0:
                    kind[c], original[c], deviation[c] = 2, j[r], dv[r]
                    break
        p = q
    return kind, original, deviation


# ------------------------------------------------------------------------------------------------
# the dataset step: outliers
# ------------------------------------------------------------------------------------------------
def energy_sums(elements: np.ndarray, counts: np.ndarray, energy: np.ndarray, mask: np.ndarray) -> dict:
    """statistics.shard_sums of the energies of configs with element counts ``counts`` (n, n_elements)."""
    counts = np.asarray(counts, dtype=np.int64)
    numbers = np.repeat(np.tile(np.asarray(elements, dtype=np.int64), len(counts)), counts.reshape(-1))
    return shard_sums(numbers, ptr_from_counts(counts.sum(axis=1)), energy=(energy, mask))


def fit_e0(sums: Sequence[dict]) -> tuple[dict[int, float], dict]:
    """E0 per atomic number from mergeable energy sums (least squares, minimum norm when the compositions
    leave some E0 open: the residuals are the same), and the fit's rank and residual rms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = finalize(merge(list(sums)))
    e0 = {chemical_symbols.index(sym): v for sym, v in (stats.get("atomic_energies") or {}).items() if v is not None}
    info = stats.get("e0", {})
    return e0, {"values": {chemical_symbols[z]: v for z, v in sorted(e0.items())}, "rank": info.get("rank"),
                "n_configs": info.get("n_configs"), "undetermined": info.get("undetermined_elements", []),
                "residual_rms_per_atom": info.get("residual_rms_per_atom")}


def energy_residuals(elements, counts, energy, mask, e0: Mapping[int, float]) -> np.ndarray:
    """(E − Σ_z n_z E0_z) / N per config; NaN without an energy or with an element without E0."""
    e0v = np.array([e0.get(int(z), np.nan) for z in elements], dtype=np.float64).reshape(-1)
    counts = np.asarray(counts, dtype=np.float64).reshape(len(mask), len(e0v))
    ref = counts @ np.nan_to_num(e0v)
    unknown = (counts[:, np.isnan(e0v)] > 0).any(axis=1)
    n = np.maximum(counts.sum(axis=1), 1.0)
    ok = np.asarray(mask, dtype=bool) & ~unknown
    return np.where(ok, (np.asarray(energy, dtype=np.float64) - ref) / n, np.nan)


def robust_centre(values: np.ndarray, floor: float) -> tuple[float, float, int]:
    """(median, robust sigma = max(1.4826 MAD, floor), n) of the finite values; NaN when fewer than
    MIN_SAMPLES."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < MIN_SAMPLES:
        return math.nan, math.nan, len(v)
    med = float(np.median(v))
    return med, max(MAD_SCALE * float(np.median(np.abs(v - med))), floor), len(v)


def merge_histograms(total: dict[int, np.ndarray], rows: np.ndarray) -> None:
    """Add a sketch's sparse rows (element, bin, count) to dense per-element histograms (in place)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    for z in np.unique(rows[:, 0]):
        sel = rows[rows[:, 0] == z]
        h = total.setdefault(int(z), np.zeros(N_F_BINS, dtype=np.int64))
        np.add.at(h, sel[:, 1], sel[:, 2])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2.0)])


def histogram_centre(counts: np.ndarray) -> tuple[float, float, int]:
    """(median, robust sigma, n) of |F| from a log10 histogram (bin centres; 0.1 % precision)."""
    n = int(counts.sum())
    if n < MIN_SAMPLES:
        return math.nan, math.nan, n
    centres = 10.0 ** (LOG_F_MIN + (np.arange(N_F_BINS) + 0.5) * LOG_F_STEP)
    nz = counts > 0
    med = _weighted_median(centres[nz], counts[nz])
    mad = _weighted_median(np.abs(centres[nz] - med), counts[nz])
    return med, max(MAD_SCALE * mad, SIGMA_FLOOR["forces"]), n


def force_scores(elements: np.ndarray, force_max: np.ndarray, centre: Mapping[int, tuple]) -> tuple:
    """Per config the largest robust z-score of its per-element largest |F| and that element's column
    (-1 where no element has statistics)."""
    med = np.array([centre.get(int(z), (np.nan, np.nan))[0] for z in elements], dtype=np.float64)
    sig = np.array([centre.get(int(z), (np.nan, np.nan))[1] for z in elements], dtype=np.float64)
    z = (np.asarray(force_max, dtype=np.float64) - med) / sig
    z = np.where(np.isfinite(z), z, -np.inf)
    col = np.argmax(z, axis=1) if z.shape[1] else np.zeros(len(z), dtype=np.int64)
    best = z[np.arange(len(z)), col] if z.shape[1] else np.full(len(z), -np.inf)
    return best, np.where(np.isfinite(best), col, -1)


# ------------------------------------------------------------------------------------------------
# the dataset step: everything, from the shards' sketches
# ------------------------------------------------------------------------------------------------
PAIR_ATOMS = 1 << 20  # atoms per side of one batch of candidate pairs checked together (~50 MB)


def _duplicates(keys: dict, gather, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Duplicate kinds, originals and deviations of the whole dataset from its per-config keys."""
    n = len(keys["content"])
    first = first_of_content(keys["content"])
    uniq = np.flatnonzero(first == np.arange(n))
    searches = [(keys["exact_key"][uniq], _EXACT_OFFSETS)]
    if tolerance > 0:
        searches.append((keys["near_key"][uniq], _NEAR_OFFSETS))
    pairs, n_candidates = [], 0
    for k, offsets in searches:
        for i, j in candidate_pairs(k, offsets):
            i, j = uniq[i], uniq[j]
            same_n = keys["comp"][i] == keys["comp"][j]  # species, pbc and state (64-bit hash)
            code = np.unique(i[same_n] * n + j[same_n])
            n_candidates += len(code)
            pairs.extend(_check_pairs(code // n, code % n, keys["n_atoms"], gather, tolerance))
    kind, original, deviation = resolve_duplicates(n, first, pairs)
    return kind, original, deviation, {"identical_copies": int(n - len(uniq)), "candidate_pairs": n_candidates}


def _check_pairs(i: np.ndarray, j: np.ndarray, n_atoms: np.ndarray, gather, tolerance: float):
    """Check candidate pairs exactly on the positions, in batches of about PAIR_ATOMS atoms."""
    cum = np.cumsum(n_atoms[i])
    start = 0
    while start < len(i):
        stop = max(int(np.searchsorted(cum, cum[start] - n_atoms[i[start]] + PAIR_ATOMS, "right")), start + 1)
        bi, bj = i[start:stop], j[start:stop]
        ids = np.unique(np.concatenate([bi, bj]))
        data = gather(ids)
        ra, rb = np.searchsorted(ids, bi), np.searchsorted(ids, bj)
        a_idx, b_idx = ranges_index(data["ptr"], ra), ranges_index(data["ptr"], rb)
        same, raw, centred, dcell = pair_deviations(
            data["positions"][a_idx], data["positions"][b_idx], data["numbers"][a_idx], data["numbers"][b_idx],
            ptr_from_counts(np.diff(data["ptr"])[ra]), data["cell"][ra], data["cell"][rb], data["pbc"][ra],
            data["pbc"][rb])
        exact = same & (raw <= EXACT_TOLERANCE) & (dcell <= EXACT_TOLERANCE)
        near = same & (centred <= tolerance) & (dcell <= tolerance)
        yield bi, bj, exact, near, centred
        start = stop


def _energy_centre(load, offsets: np.ndarray, sums: list[dict], sigma: float) -> tuple:
    """E0 fit, per-config residual energy per atom, its robust centre; refitted once without the configs
    beyond ``sigma`` robust sigmas (one absurd energy moves every E0 of a plain least squares)."""
    n_shards = len(offsets) - 1

    def residuals(e0):
        out = np.full(int(offsets[-1]), np.nan)
        for k in range(n_shards):
            sk = load(k)
            out[offsets[k]:offsets[k + 1]] = energy_residuals(sk["elements"], sk["element_counts"], sk["energy"],
                                                              sk["energy_mask"], e0)
        return out

    e0, info = fit_e0(sums) if offsets[-1] else ({}, {})
    resid = residuals(e0)
    centre = robust_centre(resid, SIGMA_FLOOR["energy"])
    far = np.abs(resid - centre[0]) > sigma * centre[1] if math.isfinite(centre[0]) else np.zeros(len(resid), bool)
    if far.any():
        refit = []
        for k in range(n_shards):
            sk = load(k)
            refit.append(energy_sums(sk["elements"], sk["element_counts"], sk["energy"],
                                     np.asarray(sk["energy_mask"], bool) & ~far[offsets[k]:offsets[k + 1]]))
        refit_e0, info = fit_e0(refit)
        e0 = {**e0, **refit_e0}  # an element only the far configs hold keeps its first E0
        info.update(refit_without=int(far.sum()), values={chemical_symbols[z]: v for z, v in sorted(e0.items())})
        resid = residuals(e0)
        centre = robust_centre(resid, SIGMA_FLOOR["energy"])
    return resid, centre, info


def _details(sk: Mapping, c: int, flag: str, ctx: dict) -> str:
    """The detail text of config ``c`` (row in its shard's sketch) for ``flag``."""
    g = ctx["g"][c]
    if flag == "duplicate":
        return f"duplicate of {ctx['name'](ctx['original'][g])} (positions within {EXACT_TOLERANCE:g} Å)"
    if flag == "near_duplicate":
        return (f"near duplicate of {ctx['name'](ctx['original'][g])}: max |Δr| {ctx['deviation'][g]:.4g} Å after "
                f"removing the translation (tolerance {ctx['tol']:g} Å)")
    if flag == "energy_outlier":
        (med, sig, _), r = ctx["energy"], ctx["resid"][g]
        return (f"energy per atom after E0 {r:.6g} eV, median {med:.6g} eV, {abs(r - med) / sig:.1f} robust sigmas "
                f"({sig:.3g} eV/atom)")
    if flag == "force_outlier":
        col = ctx["col"][c]
        z = int(sk["elements"][col])
        fm, fs, _ = ctx["forces"][z]
        el = chemical_symbols[z]
        return (f"max |F| {sk['force_max'][c, col]:.6g} eV/Å on atom {int(sk['force_atom'][c, col])} ({el}), {el} "
                f"median {fm:.4g} eV/Å, {ctx['score'][c]:.1f} robust sigmas ({fs:.3g} eV/Å)")
    if flag == "charge_renormalised":
        return f"charges shifted by total_charge - sum(q) = {sk['charge_renormalisation'][c]:+.6g} e at ingest"
    return (f"|μ_DFT - μ(charges, multipoles)| {sk['dipole_error'][c]:.4g} e·Å, |μ_DFT| {sk['dipole_norm'][c]:.4g} "
            f"e·Å, threshold {ctx['d_limit'][c]:.4g} e·Å")


def _shard_flags(sk: Mapping, ctx: dict, s: Mapping) -> np.ndarray:
    """Flag bits of one shard's configs (ctx: the dataset's duplicates, residuals and robust centres; the
    per-shard force scores and dipole limits are added to it for the details)."""
    g, sigma = ctx["g"], s["outlier_sigma"]
    flags = np.zeros(len(g), dtype=np.uint32)
    flags[ctx["kind"][g] == 1] |= BIT["duplicate"]
    flags[ctx["kind"][g] == 2] |= BIT["near_duplicate"]
    med, sig, _ = ctx["energy"]
    if math.isfinite(med):
        flags[np.abs(ctx["resid"][g] - med) > sigma * sig] |= BIT["energy_outlier"]
    ctx["score"], ctx["col"] = force_scores(sk["elements"], sk["force_max"],
                                            {z: c[:2] for z, c in ctx["forces"].items()})
    flags[ctx["score"] > sigma] |= BIT["force_outlier"]
    flags[np.asarray(sk["charge_renormalisation"], dtype=np.float64) != 0] |= BIT["charge_renormalised"]
    ctx["d_limit"] = s["dipole_tolerance"] * np.maximum(np.nan_to_num(np.asarray(sk["dipole_norm"])), DIPOLE_FLOOR)
    with np.errstate(invalid="ignore"):
        flags[np.asarray(sk["dipole_error"]) > ctx["d_limit"]] |= BIT["dipole_disagreement"]
    return flags


def flag_dataset(n_shards: int, load, gather, settings: Mapping) -> tuple[list[dict], dict]:
    """The flags of a dataset from its shards' sketches.

    load(k): the sketch of shard k (a mapping of arrays, :func:`shard_sketch` plus ``source`` (n, 2) and
    ``inputs`` (input paths)); gather(ids): numbers, positions, ptr, cell, pbc of the configs at the sorted
    global positions ``ids``. Returns per shard {"flags", "original", "rows": [(file, frame, flag, detail)]}
    and the meta (settings, counts, thresholds, e0).
    """
    s = check_settings(settings)
    tol = s["near_duplicate_tolerance"]
    keys = {k: [] for k in ("comp", "content", "exact_key", "near_key", "n_atoms", "source")}
    sizes, inputs, sums, hist = [], None, [], {}
    for k in range(n_shards):
        sk = load(k)
        sizes.append(len(sk["n_atoms"]))
        for name in keys:
            keys[name].append(np.asarray(sk[name]))
        paths = [str(p) for p in sk["inputs"]]
        if inputs is not None and paths != inputs and sizes[-1]:
            raise ValueError(f"shard {k}: its input files {paths} differ from the other shards' {inputs}: "
                             "the shards are not of one dataset; rerun the dataset's ingest")
        inputs = paths if inputs is None or not sizes[-1] else inputs
        sums.append(energy_sums(sk["elements"], sk["element_counts"], sk["energy"], sk["energy_mask"]))
        merge_histograms(hist, sk["force_hist"])
    keys = {name: np.concatenate(v) if v else np.zeros(0) for name, v in keys.items()}
    offsets = ptr_from_counts(np.array(sizes, dtype=np.int64))
    n = int(offsets[-1])
    kind, original, deviation, dup_info = _duplicates(keys, gather, tol) if n else (
        np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0), {})
    resid, e_centre, e0_info = _energy_centre(load, offsets, sums, s["outlier_sigma"])
    f_centre = {z: histogram_centre(h) for z, h in sorted(hist.items())}

    def where(g) -> tuple[str, int]:
        f, fr = (int(v) for v in keys["source"][g])
        return (inputs[f] if 0 <= f < len(inputs or []) else str(f)), fr

    def name(g) -> str:
        path, frame = where(g)
        return f"{path}:{frame}"

    ctx = {"kind": kind, "original": original, "deviation": deviation, "resid": resid, "energy": e_centre,
           "forces": f_centre, "tol": tol, "name": name}
    shards, counts = [], dict.fromkeys(FLAG_NAMES, 0)
    for k in range(n_shards):
        sk = load(k)
        ctx["g"] = g = np.arange(offsets[k], offsets[k + 1])
        flags = _shard_flags(sk, ctx, s)
        rows = []
        for c in np.flatnonzero(flags):  # one step per flagged config
            for flag in (f for f in FLAG_NAMES if flags[c] & BIT[f]):
                counts[flag] += 1
                rows.append((*where(g[c]), flag, _details(sk, int(c), flag, ctx)))
        shards.append({"flags": flags, "original": np.where(kind[g] > 0, original[g], -1).astype(np.int64),
                       "rows": rows})
    med, sig, n_e = e_centre
    meta = {
        "settings": s, "n_configs": n, "counts": counts,
        "thresholds": {
            "exact_duplicate_tolerance": EXACT_TOLERANCE, "near_duplicate_tolerance": tol,
            "outlier_sigma": s["outlier_sigma"],
            "energy_per_atom": {"median": _num(med), "robust_sigma": _num(sig), "n_configs": n_e},
            "forces": {chemical_symbols[z]: {"median": _num(c[0]), "robust_sigma": _num(c[1]), "n_atoms": c[2]}
                       for z, c in f_centre.items()},
            "dipole_tolerance": s["dipole_tolerance"], "dipole_floor": DIPOLE_FLOOR,
        },
        "e0": e0_info, "duplicates": dup_info,
    }
    return shards, meta


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
