"""The per-shard sketch (:func:`shard_sketch`): everything the dataset step needs of one shard, a few
numbers per config (keys, element counts, energy, largest |F| per element, the local flags' values) and a
sparse |F| histogram, so that flagging a dataset needs memory bounded by one shard. The dipole errors of
``dipole_disagreement`` are computed here (they need the atoms)."""

from __future__ import annotations

import numpy as np

from ..columns import ptr_from_counts, ranges_index
from ..reference.dipoles import compute_dipoles
from .keys import composition_keys, content_keys, exact_keys, near_keys
from .robust import N_F_BINS, force_bins
from .segments import atom_index


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
        c, z, a = cfg_of_atom[am], el_idx[am], atom_index(ptr)[am]
        order = np.lexsort((-fmag, z, c))  # per (config, element) the largest first
        first = np.ones(len(order), dtype=bool)
        first[1:] = (c[order][1:] != c[order][:-1]) | (z[order][1:] != z[order][:-1])
        sel = order[first]
        fmax[c[sel], z[sel]] = fmag[sel]
        fatom[c[sel], z[sel]] = a[sel]
        keys, cnt = np.unique(z * N_F_BINS + force_bins(fmag), return_counts=True)
        hist = np.column_stack([elements[keys // N_F_BINS], keys % N_F_BINS, cnt]).astype(np.int64)
    out.update(force_max=fmax, force_atom=fatom, force_hist=hist)
    out["dipole_error"], out["dipole_norm"] = _dipole_errors(positions, ptr, pbc, dipole, charges)
    renorm = np.zeros(n_cfg)
    if renormalisation is not None:
        v, m = np.asarray(renormalisation[0], dtype=np.float64), np.asarray(renormalisation[1], dtype=bool)
        renorm = np.where(m & np.isfinite(v), v, 0.0)
    out["charge_renormalisation"] = renorm
    return out


NEUTRAL_CHARGE = 1e-3  # e: configs whose charges sum to more are not compared (origin-dependent dipole)


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
    # the dipole of a charged config depends on the origin, which the DFT code chose: compare neutral ones only
    q = mult if mult.ndim == 1 else mult[:, 0]
    neutral = np.abs(np.add.reduceat(q, sub_ptr[:-1]) if len(q) else np.zeros(0)) <= NEUTRAL_CHARGE
    if not neutral.all():
        rows = rows[neutral]
        if not len(rows):
            return err, norm
        a_idx = ranges_index(ptr, rows)
        mult = np.asarray(charges[0], dtype=np.float64)[a_idx]
        sub_ptr = ptr_from_counts(np.diff(ptr)[rows])
    mu = compute_dipoles(np.asarray(positions, dtype=np.float64)[a_idx], mult, sub_ptr)
    ref = np.asarray(dipole[0], dtype=np.float64).reshape(n_cfg, 3)[rows]
    m = dm[rows]
    err[rows] = np.sqrt((np.where(m, ref - mu, 0.0) ** 2).sum(axis=1))
    norm[rows] = np.sqrt((np.where(m, ref, 0.0) ** 2).sum(axis=1))
    return err, norm
