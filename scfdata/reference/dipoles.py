"""Configuration dipoles from atomic multipoles, and the dipole component mask by boundary class.

``μ = Σ_i q_i (r_i − origin) + Σ_i p_i`` (e·Å), vectorised over all configs with ``np.add.reduceat``.
The origin matters only for charged configurations (μ of a neutral one is origin independent).
Positions are used as given: for periodic configs the dipole is not a well-defined observable
(see :func:`dipole_mask_from_pbc`); molecules are not made whole here.
Not supported: quadrupoles do not enter the dipole (they have none).
"""

from __future__ import annotations

import numpy as np

ORIGINS = ("zero", "centre_of_mass", "centre_of_geometry")


def _segment_sum(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Sum rows of ``values`` over the segments ``ptr[c]:ptr[c+1]`` (empty segments give 0)."""
    n_cfg = len(ptr) - 1
    out = np.zeros((n_cfg,) + values.shape[1:], dtype=float)
    counts = np.diff(ptr)
    nonempty = counts > 0
    if values.shape[0] and nonempty.any():
        out[nonempty] = np.add.reduceat(values, ptr[:-1][nonempty], axis=0)
    return out


def compute_dipoles(positions, multipoles, ptr, masses=None, origin: str = "zero") -> np.ndarray:
    """Dipole of every config, (n_configs, 3) in e·Å.

    Parameters
    ----------
    positions : (n_atoms, 3) Å, all configs concatenated.
    multipoles : (n_atoms, K) MACE_SCF order (K = 1 charges only, K >= 4 adds the atomic dipoles).
    ptr : (n_configs + 1,) atom pointer.
    masses : (n_atoms,) amu, needed for ``origin="centre_of_mass"``.
    origin : "zero" | "centre_of_mass" | "centre_of_geometry".
    """
    if origin not in ORIGINS:
        raise ValueError(f"Unknown origin {origin!r}. Must be one of 'zero', 'centre_of_mass', or "
                         "'centre_of_geometry'.")
    pos = np.asarray(positions, dtype=float)
    m = np.asarray(multipoles, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    ptr = np.asarray(ptr, dtype=np.int64)
    n = pos.shape[0]
    if pos.shape != (n, 3) or m.shape[0] != n or ptr[0] != 0 or ptr[-1] != n or np.any(np.diff(ptr) < 0):
        raise ValueError(
            f"expected positions (n_atoms, 3), multipoles (n_atoms, K) and a non-decreasing ptr from 0 to "
            f"n_atoms; got positions {pos.shape}, multipoles {m.shape}, ptr[0]={ptr[0]}, ptr[-1]={ptr[-1]}"
        )
    q = m[:, 0]
    counts = np.diff(ptr)
    cfg = np.repeat(np.arange(len(counts)), counts)
    if origin == "zero":
        rel = pos
    else:
        if origin == "centre_of_mass":
            if masses is None:
                raise ValueError("origin='centre_of_mass' needs `masses` (n_atoms,); pass the atomic masses")
            w = np.asarray(masses, dtype=float).reshape(-1)
            if w.shape[0] != n:
                raise ValueError(f"`masses` must have shape ({n},), got {w.shape}")
        else:
            w = np.ones(n)
        wsum = _segment_sum(w, ptr)
        centre = _segment_sum(w[:, None] * pos, ptr) / np.where(wsum > 0, wsum, 1.0)[:, None]
        rel = pos - centre[cfg]
    mu = _segment_sum(q[:, None] * rel, ptr)
    if m.shape[1] >= 4:
        mu += _segment_sum(m[:, [3, 1, 2]], ptr)
    return mu


def dipole_mask_from_pbc(pbc) -> np.ndarray:
    """Dipole component weights (n, 3) from pbc (n, 3): 1 on open directions, 0 on periodic ones.

    FFF -> (1,1,1); TTF -> (0,0,1); TTT -> (0,0,0). The directions are the Cartesian axes, which
    assumes the periodic cell vectors of a slab lie in the xy plane.
    """
    p = np.asarray(pbc, dtype=bool)
    if p.ndim == 1:
        p = p[None, :]
    if p.shape[-1] != 3:
        raise ValueError(f"`pbc` must have shape (n_configs, 3), got {p.shape}")
    return (~p).astype(float)
