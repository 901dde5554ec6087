"""Atomic multipole conventions: MACE_SCF column order <-> Cartesian charge, dipole, quadrupole.

MACE_SCF stores per-atom multipoles ("density coefficients") as ``(n_atoms, (L+1)²)`` columns::

    [Q, d_y, d_z, d_x, q_{2,-2}, q_{2,-1}, q_{2,0}, q_{2,1}, q_{2,2}]

Units: e, e·Å, e·Å². The convention was pinned from graph-longrange 0.4.4 (``gto_utils.GTOBasis`` with
``normalize="multipoles"``, the normalisation used for energies and potentials): the basis function is
``C_l Y_lm(r̂) r^l exp(-r²/2σ²)`` with e3nn ``normalization="integral"`` real spherical harmonics of the
permuted vector ``(y, z, x)`` and ``1/C_l = sqrt(4π/(2l+1)) 2^((2l+1)/2) Γ((2l+3)/2) σ^(2l+3)``.
That makes every coefficient the multipole moment of its density with respect to the *Racah-normalised*
real solid harmonics ``R_lm = sqrt(4π/(2l+1)) r^l Y_lm``::

    Q        = ∫ρ
    d_a      = ∫ρ r_a                                   (Cartesian dipole, stored as y, z, x)
    q_{2,-2} = ∫ρ √3 x y
    q_{2,-1} = ∫ρ √3 y z
    q_{2, 0} = ∫ρ (3z² − r²)/2
    q_{2, 1} = ∫ρ √3 x z
    q_{2, 2} = ∫ρ (√3/2)(x² − y²)

(Stone's spherical multipoles Q_lm in the real "c/s" form). With the traceless Cartesian quadrupole
``Θ_ab = ∫ρ (3 r_a r_b − r² δ_ab)/2`` (Buckingham/Stone, e·Å²) the conversion is::

    q_{2,-2} = (2/√3) Θ_xy     q_{2,-1} = (2/√3) Θ_yz     q_{2,0} = Θ_zz
    q_{2, 1} = (2/√3) Θ_xz     q_{2, 2} = (1/√3)(Θ_xx − Θ_yy)

and back ``Θ_xx = (−q_{2,0} + √3 q_{2,2})/2``, ``Θ_yy = (−q_{2,0} − √3 q_{2,2})/2``, ``Θ_zz = q_{2,0}``,
``Θ_xy = (√3/2) q_{2,-2}``, ``Θ_yz = (√3/2) q_{2,-1}``, ``Θ_xz = (√3/2) q_{2,1}``.
A point quadrupole then has the potential ``k_e Θ_ab r_a r_b / r⁵``.

Not supported: l > 2; the trace (r²-moment) of a charge distribution is not representable (it has no
field outside the distribution) and is dropped by :func:`cartesian_to_multipoles`.
"""

from __future__ import annotations

import numpy as np

_S3 = np.sqrt(3.0)


def n_components(max_l: int) -> int:
    """Number of columns ``(max_l+1)²`` for multipoles up to ``max_l`` (0, 1 or 2)."""
    if max_l not in (0, 1, 2):
        raise ValueError(f"max_l must be 0, 1 or 2, got {max_l!r}")
    return (max_l + 1) ** 2


def check_multipole_columns(shape, max_l: int | None = None) -> int:
    """The order to use for a multipole array of ``shape`` (n, K), K in (1, 4, 9), checked against ``max_l``
    (default: every column present); a ValueError says what is wrong and what to do."""
    if len(shape) != 2 or shape[1] not in (1, 4, 9):
        raise ValueError(f"`multipoles` must have shape (n_atoms, K) with K in (1, 4, 9), got shape {tuple(shape)}")
    have_l = {1: 0, 4: 1, 9: 2}[shape[1]]
    if max_l is None:
        return have_l
    if max_l > have_l:
        raise ValueError(
            f"max_l={max_l} needs {(max_l + 1) ** 2} multipole columns, the array has {shape[1]}; "
            "lower max_l or provide the higher multipoles"
        )
    return max_l


def multipoles_to_cartesian(multipoles, max_l: int | None = None):
    """Split MACE_SCF-ordered multipoles into Cartesian parts.

    Parameters
    ----------
    multipoles : (n, K) array with K in {1, 4, 9}: numpy (float64 out) or a torch tensor (tensors out,
        same dtype and device).
    max_l : use only columns up to this order (default: all columns present).

    Returns
    -------
    charges (n,), dipoles (n, 3) Cartesian (x, y, z) or None, quadrupoles (n, 3, 3) traceless
    Cartesian Θ or None (None when the order is not used).
    """
    is_tensor = hasattr(multipoles, "detach")
    m = multipoles if is_tensor else np.asarray(multipoles, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    max_l = check_multipole_columns(m.shape, max_l)
    charges = m[:, 0] * 1.0  # a copy, numpy or torch
    dipoles = None
    if max_l >= 1:  # row-major (n, 3), as the engines read it
        dipoles = m[:, [3, 1, 2]].contiguous() if is_tensor else np.take(m, [3, 1, 2], axis=1)
    quads = None
    if max_l >= 2:
        q = m[:, 4:9]
        xy, yz, xz = 0.5 * _S3 * q[:, 0], 0.5 * _S3 * q[:, 1], 0.5 * _S3 * q[:, 3]
        zz = q[:, 2]
        xx = 0.5 * (-q[:, 2] + _S3 * q[:, 4])
        yy = 0.5 * (-q[:, 2] - _S3 * q[:, 4])
        if is_tensor:
            import torch

            stack = torch.stack
        else:
            stack = np.stack
        quads = stack([stack([xx, xy, xz], -1), stack([xy, yy, yz], -1), stack([xz, yz, zz], -1)], -2)
    return charges, dipoles, quads


def cartesian_to_multipoles(charges, dipoles=None, quadrupoles=None) -> np.ndarray:
    """Assemble MACE_SCF-ordered multipoles from Cartesian charge, dipole (x,y,z) and quadrupole Θ.

    The quadrupole is symmetrised and its trace removed (see the module docstring) before conversion.
    Returns (n, 1), (n, 4) or (n, 9) depending on which parts are given.
    """
    q = np.asarray(charges, dtype=float).reshape(-1)
    n = q.shape[0]
    if quadrupoles is not None and dipoles is None:
        dipoles = np.zeros((n, 3))
    cols = [q[:, None]]
    if dipoles is not None:
        d = np.asarray(dipoles, dtype=float)
        if d.shape != (n, 3):
            raise ValueError(f"`dipoles` must have shape ({n}, 3) (Cartesian x,y,z), got {d.shape}")
        cols.append(d[:, [1, 2, 0]])
    if quadrupoles is not None:
        t = np.asarray(quadrupoles, dtype=float)
        if t.shape != (n, 3, 3):
            raise ValueError(f"`quadrupoles` must have shape ({n}, 3, 3), got {t.shape}")
        t = 0.5 * (t + np.swapaxes(t, 1, 2))
        tr = np.trace(t, axis1=1, axis2=2) / 3.0
        t = t - tr[:, None, None] * np.eye(3)
        c = 2.0 / _S3
        cols.append(
            np.stack(
                [c * t[:, 0, 1], c * t[:, 1, 2], t[:, 2, 2], c * t[:, 0, 2], (t[:, 0, 0] - t[:, 1, 1]) / _S3],
                axis=1,
            )
        )
    return np.concatenate(cols, axis=1)


def charges_dipoles_to_multipoles(charges, dipoles_xyz) -> np.ndarray:
    """(n,) charges and (n, 3) Cartesian dipoles (x, y, z) -> (n, 4) ``[Q, d_y, d_z, d_x]``."""
    return cartesian_to_multipoles(charges, dipoles_xyz)


def multipoles_to_charges_dipoles(multipoles) -> tuple[np.ndarray, np.ndarray]:
    """(n, K>=4) MACE_SCF multipoles -> ((n,) charges, (n, 3) Cartesian dipoles (x, y, z))."""
    m = np.asarray(multipoles, dtype=float)
    if m.ndim != 2 or m.shape[1] < 4:
        raise ValueError(f"`multipoles` must have shape (n_atoms, K>=4) to hold dipoles, got {m.shape}")
    return m[:, 0].copy(), m[:, [3, 1, 2]].copy()


def rotate_multipoles(multipoles, rotation) -> np.ndarray:
    """Multipoles of a rigidly rotated system (``r' = R r``): dipoles ``R p``, quadrupoles ``R Θ Rᵀ``."""
    m = np.asarray(multipoles, dtype=float)
    rot = np.asarray(rotation, dtype=float)
    q, d, t = multipoles_to_cartesian(m)
    d = None if d is None else d @ rot.T
    t = None if t is None else np.einsum("ab,nbc,dc->nad", rot, t, rot)
    return cartesian_to_multipoles(q, d, t)


def solid_harmonics_l2(vectors) -> np.ndarray:
    """Racah-normalised real solid harmonics R_2m(r), m = -2..2 (columns as in MACE_SCF)."""
    v = np.asarray(vectors, dtype=float)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack(
        [_S3 * x * y, _S3 * y * z, z * z - 0.5 * (x * x + y * y), _S3 * x * z, 0.5 * _S3 * (x * x - y * y)],
        axis=-1,
    )
