"""Slab (periodic in the plane of the first two cell vectors, open along the normal n = a×b/|a×b|).

Method: the exact 2D-periodic potential is obtained from a 3D Ewald sum (:mod:`scfdata.reference.periodic`:
the compiled plain Ewald below ``PME_MIN_ATOMS`` atoms, all slabs of a batch in one call, PME above) in a
box whose third vector is ``L n`` with vacuum chosen from ``tolerance`` (the interaction with the
artificial images decays as ``exp(−k_min·gap)``, k_min the shortest in-plane reciprocal vector), plus the
closed-form correction of the laterally averaged (k_xy = 0) part — the Yeh–Berkowitz dipole term together
with its charged-slab (Ballenegger et al.) and quadratic companions. With z the coordinate along n::

    V_2D(z_i) = V_3D(z_i) + k_e [ (4π/V) M_z z_i − (2π/V)(Q z_i² + S_2) − π L Q / (3A) ]
    M_z = Σ_j (q_j z_j + p_j,z),   S_2 = Σ_j (q_j (z_j² + σ²) + 2 p_j,z z_j + (2/3) Θ_j,zz)

which is exact (no 1/L error) as long as the slab is thinner than half the box (ensured).

Gauge (zero of potential): the k_xy = 0 part of the potential is ``−(2π k_e/A) Σ_j ∫ρ_j(z')|z − z'|dz'``
with no additive constant. For a neutral slab this means the average of the two far-vacuum potentials
(z -> +∞ and z -> −∞) is zero; for a charged slab the potential grows as −(2π k_e Q/A)|z| far away
(no neutralising background is needed or added). The ESP is invariant under translating the whole slab
along z and under in-plane translations, and does not depend on the vacuum size given in the input cell
(the input's third cell vector is ignored).

``molecule_in_box``: the isolated-molecule limit of a periodic evaluation minus its spurious image terms
is exactly the open-boundary direct sum, so :func:`molecule_in_box_potential_field` simply uses the
realspace engine (which is exact, not an approximation of that limit).

Not supported: slabs periodic along other than the first two cell vectors (permute the cell first).
"""

from __future__ import annotations

import math

import numpy as np

from scfdata.constants import K_E
from scfdata.reference.batch import raise_if_not_finite
from scfdata.reference.esp_realspace import realspace_potential_field


def _in_plane_kmin(cells):
    """Length of the shortest non-zero reciprocal vector of each 2D lattice (cells[:, 0], cells[:, 1]):
    the reciprocal basis Lagrange–Gauss reduced (vectorised over cells), whose first vector is then the
    shortest of the lattice, however skewed the cell."""
    m = cells[:, :2]  # (c, 2, 3)
    gram = np.einsum("cia,cja->cij", m, m)
    recip = 2 * math.pi * np.linalg.solve(gram, m)  # rows b_i with a_i·b_j = 2π δ_ij, in the plane
    u, w = recip[:, 0], recip[:, 1]
    for _ in range(200):  # Lagrange–Gauss: O(log(|b|/|a|)) rounds, a handful for any real cell
        swap = (w * w).sum(1) < (u * u).sum(1)
        u, w = np.where(swap[:, None], w, u), np.where(swap[:, None], u, w)
        mu = np.rint((u * w).sum(1) / (u * u).sum(1))
        if not mu.any():
            break
        w = w - mu[:, None] * u
    return np.linalg.norm(u, axis=1)


def slab_potential_field(
    positions,
    charges,
    dipoles,
    quadrupoles,
    cell,
    *,
    smearing_width: float = 0.0,
    self_interaction: str = "exclude",
    tolerance: float = 1e-6,
    with_fields: bool = False,
    vacuum: float | None = None,
):
    """Potential (V) and field (V/Å) at the atoms of ONE slab; ``cell[0]``, ``cell[1]`` are periodic.

    ``vacuum`` (Å) overrides the automatic gap between periodic copies of the slab in the auxiliary 3D box
    (for convergence tests only).
    """
    n = np.asarray(positions).shape[0]
    return slabs_potential_field(positions, charges, dipoles, quadrupoles, [0, n], np.reshape(cell, (1, 3, 3)),
                                 smearing_width=smearing_width, self_interaction=self_interaction,
                                 tolerance=tolerance, with_fields=with_fields, vacuum=vacuum)


def slabs_potential_field(positions, charges, dipoles, quadrupoles, ptr, cells, *, smearing_width=0.0,
                          self_interaction="exclude", tolerance=1e-6, with_fields=False, vacuum=None,
                          config_index=None):
    """Potential (V) and field (V/Å) at the atoms of many slabs (configs by ``ptr``, one cell each, the first
    two vectors periodic), vectorised over slabs; the auxiliary 3D boxes are summed together by
    :func:`scfdata.reference.periodic.periodic_potential_field`. ``config_index`` numbers the configs in
    error messages."""
    from scfdata.reference.periodic import periodic_potential_field

    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    ptr = np.asarray(ptr, dtype=np.int64)
    counts = np.diff(ptr)
    label = np.arange(counts.size) if config_index is None else np.asarray(config_index)
    if np.any(counts == 0):
        raise ValueError(f"config {int(label[np.flatnonzero(counts == 0)[0]])}: a slab without atoms")
    raise_if_not_finite(ptr, label, positions=positions, charges=np.reshape(charges, (-1, 1)), dipoles=dipoles,
                        quadrupoles=quadrupoles)  # before z and the centring spread one bad atom to its slab
    bad_cell = ~np.isfinite(cells[:, :2]).all(axis=(1, 2))
    if bad_cell.any():
        c = int(np.flatnonzero(bad_cell)[0])
        raise ValueError(f"config {int(label[c])}: the in-plane cell vectors are not finite, got "
                         f"a={cells[c, 0].tolist()}, b={cells[c, 1].tolist()}")
    normal = np.cross(cells[:, 0], cells[:, 1])
    area = np.linalg.norm(normal, axis=1)
    if not np.all(area > 1e-9):
        c = int(np.flatnonzero(~(area > 1e-9))[0])
        raise ValueError(f"config {int(label[c])}: a slab needs two independent in-plane cell vectors, got "
                         f"a={cells[c, 0].tolist()}, b={cells[c, 1].tolist()}")
    normal /= area[:, None]
    pos = np.asarray(positions, dtype=float)
    q = np.asarray(charges, dtype=float).reshape(-1)
    cfg = np.repeat(np.arange(counts.size), counts)

    def per_slab(x):
        return np.bincount(cfg, weights=x, minlength=counts.size)

    z = np.einsum("na,na->n", pos, normal[cfg])
    z_max, z_min = np.maximum.reduceat(z, ptr[:-1]), np.minimum.reduceat(z, ptr[:-1])
    zc, thickness = 0.5 * (z_max + z_min), z_max - z_min
    sigma = float(smearing_width)
    if vacuum is None:
        w2 = q**2
        for x in (dipoles, quadrupoles):
            if x is not None:
                w2 = w2 + (np.asarray(x).reshape(pos.shape[0], -1) ** 2).sum(axis=1)
        w = np.sqrt(per_slab(w2))
        decay = np.log(np.maximum(K_E * np.maximum(w, 1e-3) / tolerance, math.e)) / _in_plane_kmin(cells)
        gap = np.maximum(thickness, decay) + 2.0 + 8.0 * sigma
    else:
        gap = np.full(counts.size, float(vacuum))
    length = thickness + gap
    boxes = np.stack([cells[:, 0], cells[:, 1], normal * length[:, None]], axis=1)
    zr = z - zc[cfg]  # each slab centred on z = 0
    v, e = periodic_potential_field(pos - normal[cfg] * zc[cfg, None], q, dipoles, quadrupoles, ptr, boxes,
                                    smearing_width=sigma, self_interaction=self_interaction, tolerance=tolerance,
                                    with_fields=with_fields, config_index=label)
    vol = area * length
    pz = np.zeros_like(q) if dipoles is None else np.einsum("na,na->n", dipoles, normal[cfg])
    tzz = np.zeros_like(q) if quadrupoles is None else np.einsum("na,nab,nb->n", normal[cfg], quadrupoles, normal[cfg])

    total, m_z = per_slab(q), per_slab(q * zr + pz)
    s2 = per_slab(q * (zr**2 + sigma**2) + 2 * pz * zr + (2.0 / 3.0) * tzz)
    v = v + K_E * (4 * math.pi / vol[cfg] * m_z[cfg] * zr - 2 * math.pi / vol[cfg] * (total[cfg] * zr**2 + s2[cfg])
                   - (math.pi * length * total / (3 * area))[cfg])
    if with_fields:
        ez = K_E * 4 * math.pi / vol[cfg] * (total[cfg] * zr - m_z[cfg])
        e = e + ez[:, None] * normal[cfg]
    return v, e


def molecule_in_box_potential_field(positions, charges, dipoles=None, quadrupoles=None, cell=None, **kwargs):
    """Isolated molecule in a (periodic) box: exactly the open-boundary result (realspace engine).

    ``cell`` is accepted for signature symmetry and ignored; ``tolerance`` is ignored (the sum is exact).
    """
    kwargs.pop("tolerance", None)
    return realspace_potential_field(positions, charges, dipoles, quadrupoles, **kwargs)
