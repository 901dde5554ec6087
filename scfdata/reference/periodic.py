"""3D periodic sums of many cells, each by the faster engine for its size: all cells below ``PME_MIN_ATOMS``
atoms in one compiled plain Ewald call (:mod:`~scfdata.reference.ewald_numba`, one cell per thread), larger
cells one at a time by smooth particle-mesh Ewald (:mod:`~scfdata.reference.pme`, N log N). Both use the
Ewald split of :mod:`~scfdata.reference.ewald` and agree to within ``tolerance``. Used for TTT configs and
for the auxiliary 3D boxes of slabs (:mod:`~scfdata.reference.slab`).
"""

from __future__ import annotations

import numpy as np

from scfdata.reference.batch import atoms_of, raise_if_bad_cells, raise_if_not_finite, raise_if_not_traceless

#: Cells with at least this many atoms go to particle-mesh Ewald, one at a time; smaller ones to the compiled
#: plain Ewald, all in one call (measured at water density, 1e-6 V, one cell: the compiled Ewald is faster
#: than PME up to ~600 atoms with dipoles and ~1,000 with charges only; benchmarks/bench_esp_periodic.py).
PME_MIN_ATOMS = 600


def periodic_potential_field(positions, charges, dipoles, quadrupoles, ptr, cells, *, smearing_width=0.0,
                             self_interaction="exclude", tolerance=1e-6, with_fields=False, config_index=None):
    """Potential (V) and field (V/Å, or None) at the atoms of many periodic cells (numpy float64).

    Arguments as in :func:`scfdata.reference.ewald_numba.ewald_many` (Cartesian multipoles, ptr, one cell
    per config with rows as vectors); ``config_index`` numbers the configs in error messages.
    """
    from scfdata.reference.ewald_numba import ewald_many
    from scfdata.reference.pme import pme_potential_field

    pos = np.asarray(positions, dtype=float)
    q, p, t = (None if x is None else np.asarray(x, dtype=float) for x in (charges, dipoles, quadrupoles))
    ptr = np.asarray(ptr, dtype=np.int64)
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    counts = np.diff(ptr)
    label = np.arange(counts.size) if config_index is None else np.asarray(config_index)
    raise_if_not_finite(ptr, label, positions=pos, charges=q, dipoles=p, quadrupoles=t)
    raise_if_not_traceless(t, ptr, label)
    raise_if_bad_cells(cells[counts > 0], label[counts > 0])
    opts = dict(smearing_width=smearing_width, self_interaction=self_interaction, tolerance=tolerance,
                with_fields=with_fields)
    v = np.zeros(pos.shape[0])
    e = np.zeros((pos.shape[0], 3)) if with_fields else None
    small = np.flatnonzero((counts > 0) & (counts < PME_MIN_ATOMS))
    if small.size:
        idx, sub_ptr = atoms_of(ptr, small)
        vs, es = ewald_many(pos[idx], q[idx], None if p is None else p[idx], None if t is None else t[idx], sub_ptr,
                            cells[small], config_index=label[small], **opts)
        v[idx] = vs
        if with_fields:
            e[idx] = es
    for c in np.flatnonzero(counts >= PME_MIN_ATOMS):
        a, b = int(ptr[c]), int(ptr[c + 1])
        arrays = [None if x is None else x[a:b] for x in (pos, q, p, t)]
        try:
            vs, es = pme_potential_field(*arrays, cells[c], **opts)
        except ValueError as err:  # name the config (PME counts atoms within the cell)
            raise ValueError(f"config {int(label[c])}: {err}") from err
        v[a:b] = vs
        if with_fields:
            e[a:b] = es
    return v, e
