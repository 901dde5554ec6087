"""Slab (periodic in the plane of the first two cell vectors, open along the normal n = a×b/|a×b|).

Method: the exact 2D-periodic potential is obtained from a 3D Ewald sum (:mod:`scfdata.reference.ewald`)
in a box whose third vector is ``L n`` with vacuum chosen from ``tolerance`` (the interaction with the
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
from scfdata.reference.esp_realspace import realspace_potential_field
from scfdata.reference.ewald import ewald_potential_field


def _in_plane_kmin(a, b):
    """Length of the shortest non-zero reciprocal vector of the 2D lattice (a, b)."""
    m = np.array([a, b])
    gram = m @ m.T
    recip = 2 * math.pi * np.linalg.solve(gram, m)  # rows b_i with a_i·b_j = 2π δ_ij, in the plane
    hk = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4) if (h, k) != (0, 0)])
    return float(np.linalg.norm(hk @ recip, axis=1).min())


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
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    a, b = cell[0], cell[1]
    normal = np.cross(a, b)
    area = float(np.linalg.norm(normal))
    if not area > 1e-9:
        raise ValueError(f"slab needs two independent in-plane cell vectors, got a={a.tolist()}, b={b.tolist()}")
    normal /= area
    pos = np.asarray(positions, dtype=float)
    q = np.asarray(charges, dtype=float).reshape(-1)
    z = pos @ normal
    zc = 0.5 * (z.max() + z.min())
    thickness = float(z.max() - z.min())
    sigma = float(smearing_width)
    if vacuum is None:
        w = math.sqrt(float(np.sum(q**2)) + (0.0 if dipoles is None else float(np.sum(dipoles**2)))
                      + (0.0 if quadrupoles is None else float(np.sum(quadrupoles**2))))
        kmin = _in_plane_kmin(a, b)
        decay = math.log(max(K_E * max(w, 1e-3) / tolerance, math.e)) / kmin
        vacuum = max(thickness, decay) + 2.0 + 8.0 * sigma
    length = thickness + float(vacuum)
    box = np.array([a, b, normal * length])
    shifted = pos - normal * zc  # slab centred on z = 0
    zr = z - zc
    v, e = ewald_potential_field(
        shifted, q, dipoles, quadrupoles, box,
        smearing_width=sigma, self_interaction=self_interaction, tolerance=tolerance, with_fields=with_fields,
    )
    vol = area * length
    pz = np.zeros_like(q) if dipoles is None else dipoles @ normal
    tzz = np.zeros_like(q) if quadrupoles is None else np.einsum("a,nab,b->n", normal, quadrupoles, normal)
    total = float(q.sum())
    m_z = float(np.sum(q * zr + pz))
    s2 = float(np.sum(q * (zr**2 + sigma**2) + 2 * pz * zr + (2.0 / 3.0) * tzz))
    v = v + K_E * (4 * math.pi / vol * m_z * zr - 2 * math.pi / vol * (total * zr**2 + s2)
                   - math.pi * length * total / (3 * area))
    if with_fields:
        ez = K_E * 4 * math.pi / vol * (total * zr - m_z)
        e = e + np.outer(ez, normal)
    return v, e


def molecule_in_box_potential_field(positions, charges, dipoles=None, quadrupoles=None, cell=None, **kwargs):
    """Isolated molecule in a (periodic) box: exactly the open-boundary result (realspace engine).

    ``cell`` is accepted for signature symmetry and ignored; ``tolerance`` is ignored (the sum is exact).
    """
    kwargs.pop("tolerance", None)
    return realspace_potential_field(positions, charges, dipoles, quadrupoles, **kwargs)
