"""Open-boundary direct sum in numpy: potential and field at every atom from every other atom of its config,
without numba (whose import and cache load cost a short job more than its whole sum of small configs).

The physics is that of :mod:`scfdata.reference.direct_sum_numba` (and :mod:`scfdata.reference.multipole_kernels`):
with r = r_i − r_j, in units of k_e::

    V_i = Σ_j≠i  q_j g_0 − (p_j·r) g_1 + (r·Θ_j·r) g_2 / 3
    E_i = Σ_j≠i  (−q_j g_1 + (p_j·r) g_2 − (r·Θ_j·r) g_3 / 3) r + p_j g_1 − (2/3) g_2 Θ_j r

with the radial kernels g_n of f = 1/r (point multipoles) or erf(βr)/r (MACE_SCF's Gaussian-type
multipoles, β = 1/(√2σ)), :func:`~scfdata.reference.multipole_kernels.g_coulomb` and
:func:`~scfdata.reference.multipole_kernels.g_erf` (the same series/closed-form switch as the compiled kernel).

Vectorised over configs: the configs of one atom count n are one group, and a chunk of m of them is a set
of dense (m, b, n) arrays, receiving atom × source atom (b = n rows; a config of more than
``PAIR_CHUNK`` pairs is split into blocks of rows, one config per chunk). A chunk holds at most
``PAIR_CHUNK`` (receiver, source) entries, so memory stays bounded (~15 arrays of that size) whatever the
batch. The self pair gets r² = ∞, where every kernel is 0: no mask. Each atom's row is summed whole, so
results do not depend on the chunking. A pair closer than ``MIN_SEPARATION`` gives NaN at both its atoms
(the caller reports it). The Gaussian kernel needs scipy.special.erfc (imported then); point multipoles
need numpy only.

Cost: every ordered pair is evaluated (twice the unique pairs of the compiled half loop), in numpy passes
over chunk-sized arrays: ~6 ns per pair for charges, several times that with multipoles, fields or the
Gaussian kernel, on one thread. ``engine="auto"`` of :func:`~scfdata.reference.esp_realspace.realspace_potential_field`
runs this engine for every config of at most ``AUTO_NUMPY_MAX_ATOMS`` atoms. Not supported: l > 2, per-atom
widths.
"""

from __future__ import annotations

import numpy as np

from scfdata.reference.multipole_kernels import MIN_SEPARATION, g_coulomb, g_erf, nmax_needed

#: (receiving atom, source atom) entries per chunk: 64 Ki keeps a chunk's work arrays (512 KiB each) in the
#: CPU caches; one chunk per size group (~MBs per array) measured 2x slower for 20,000 water clusters.
PAIR_CHUNK = 1 << 16

def _chunks(starts: np.ndarray, n: int):
    """(first atoms of m configs of n atoms each, first row, end row) per chunk of at most PAIR_CHUNK
    entries: m configs whole, or one config's block of rows when a config alone exceeds the chunk."""
    if n * n <= PAIR_CHUNK:
        per = PAIR_CHUNK // (n * n)
        for k in range(0, starts.size, per):
            yield starts[k:k + per], 0, n
        return
    rows = max(1, PAIR_CHUNK // n)
    for k in range(starts.size):
        for r0 in range(0, n, rows):
            yield starts[k:k + 1], r0, min(n, r0 + rows)


def _receive(a, b):
    """Σ_j a[m, i, j] b[m, i, j] -> (m, i)."""
    return np.einsum("mij,mij->mi", a, b)


def _from_sources(a, s):
    """Σ_j a[m, i, j] s[m, j] -> (m, i) (a per-source quantity)."""
    return np.einsum("mij,mj->mi", a, s)


def _chunk(pos, q, p, t, atoms, r0, r1, beta, nmax, with_fields):
    """Potential (m, b) and field (m, b, 3) or None at rows r0..r1 of the configs whose atoms are ``atoms``
    (m, n), from all their atoms."""
    x = pos[atoms]  # (m, n, 3)
    xr = x[:, r0:r1]
    rx = xr[:, :, None, 0] - x[:, None, :, 0]
    ry = xr[:, :, None, 1] - x[:, None, :, 1]
    rz = xr[:, :, None, 2] - x[:, None, :, 2]
    r2 = rx * rx
    r2 += ry * ry
    r2 += rz * rz
    rows = np.arange(r1 - r0)
    r2[:, rows, r0 + rows] = np.inf  # the self pair: every kernel is 0 there
    close = (r2 < MIN_SEPARATION**2).any(axis=2)
    r = np.sqrt(r2)
    g = g_coulomb(r, nmax) if beta is None else g_erf(r, beta, nmax)
    qs = q[atoms]
    v = _from_sources(g[0], qs)
    if with_fields:
        s = g[1] * qs[:, None, :]
        np.negative(s, out=s)
        ex = ey = ez = 0.0
    if p is not None:
        px, py, pz = (p[atoms, c][:, None, :] for c in range(3))
        pr = rx * px
        pr += ry * py
        pr += rz * pz
        v -= _receive(pr, g[1])
        if with_fields:
            pr *= g[2]
            s += pr
            ex, ey, ez = (_from_sources(g[1], pc[:, 0]) for pc in (px, py, pz))
    if t is not None:
        tt = t[atoms][:, None]  # (m, 1, n, 3, 3)
        tx = tt[..., 0, 0] * rx + tt[..., 0, 1] * ry + tt[..., 0, 2] * rz
        ty = tt[..., 1, 0] * rx + tt[..., 1, 1] * ry + tt[..., 1, 2] * rz
        tz = tt[..., 2, 0] * rx + tt[..., 2, 1] * ry + tt[..., 2, 2] * rz
        rtr = rx * tx + ry * ty + rz * tz
        v += _receive(rtr, g[2]) / 3.0
        if with_fields:
            rtr *= g[3]
            s -= rtr / 3.0
            ex = ex - (2.0 / 3.0) * _receive(g[2], tx)
            ey = ey - (2.0 / 3.0) * _receive(g[2], ty)
            ez = ez - (2.0 / 3.0) * _receive(g[2], tz)
    v[close] = np.nan  # a coincident pair: reported by the caller
    if not with_fields:
        return v, None
    return v, np.stack([ex + _receive(s, rx), ey + _receive(s, ry), ez + _receive(s, rz)], axis=-1)


def direct_sum(pos, q, p, t, ptr, beta: float | None, with_fields: bool, dipole_columns=(0, 1, 2)):
    """Potential (n,) and field (n, 3) or None at every atom, in units of k_e (no self term).

    The same arguments as :func:`scfdata.reference.direct_sum_numba.direct_sum`: pos (n, 3), q (n,),
    p (n, >=3) with p_x, p_y, p_z in ``dipole_columns`` or None, t (n, 3, 3) traceless or None (float64);
    ptr (n_configs + 1,) int atom pointer; ``beta`` = 1/(√2σ), 0 or None for point multipoles.
    """
    n_atoms = pos.shape[0]
    pos, q = np.asarray(pos, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p is not None:
        p = np.asarray(p, dtype=np.float64)[:, [int(c) for c in dipole_columns]]
    t = None if t is None else np.asarray(t, dtype=np.float64)
    beta = float(beta) if beta else None
    nmax = nmax_needed(p is not None, t is not None, with_fields)
    v = np.zeros(n_atoms)
    e = np.zeros((n_atoms, 3)) if with_fields else None
    ptr = np.asarray(ptr, dtype=np.int64)
    counts = np.diff(ptr)
    for n in np.unique(counts[counts > 1]):
        n = int(n)
        for starts, r0, r1 in _chunks(ptr[:-1][counts == n], n):
            atoms = starts[:, None] + np.arange(n)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # coincident atoms: NaN, reported
                vc, ec = _chunk(pos, q, p, t, atoms, r0, r1, beta, nmax, with_fields)
            receivers = atoms[:, r0:r1]
            v[receivers] = vc
            if with_fields:
                e[receivers] = ec
    return v, e
