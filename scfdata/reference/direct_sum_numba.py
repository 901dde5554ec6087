"""Open-boundary direct sum compiled for the CPU (numba): potential and field at every atom from every other
atom of its config, one fused loop over pairs, no pair list and no (n, n) arrays in memory.

The physics is that of :mod:`scfdata.reference.multipole_kernels`, written per pair in
:mod:`scfdata.reference.multipole_kernels_numba` (f = 1/r for point multipoles, ``beta = 0``, or
erf(βr)/r for MACE_SCF's Gaussian-type multipoles, β = 1/(√2σ)). Every pair is visited once and added to
both atoms (r → −r for the reverse direction). Configs of up to ``_HALF_LOOP_MAX_ATOMS`` atoms run one
config per thread; larger ones one receiving atom per thread (each thread sums a whole row, so the results
do not depend on the thread count). A pair closer than ``MIN_SEPARATION`` gives NaN at one of its atoms
(the caller reports it). The compiled code is cached on disk: the first call with a new combination of
inputs (dipoles or not, fields or not, array layouts) compiles for ~2 s, once per machine and version of the
sources. The cache is keyed by the content of every module of ``scfdata/reference`` (see
:mod:`scfdata.reference.numba_cache`), so an edit of the inlined kernels of ``multipole_kernels_numba.py`` or
of ``MIN_SEPARATION`` recompiles this file's kernels too; nothing needs to be touched or deleted.
Not supported: l > 2, per-atom widths, devices other than the CPU (the torch engine of
:mod:`scfdata.reference.realspace_torch` runs there). ``engine="auto"`` runs the numpy twin,
:mod:`scfdata.reference.direct_sum_numpy` (same arguments, same results to round-off), for configs small
enough that a job of them would spend more on importing numba and loading this cache than on the sum (see
:func:`scfdata.reference.esp_realspace.cpu_direct_sum`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from scfdata.reference.multipole_kernels import MIN_SEPARATION
from scfdata.reference.multipole_kernels_numba import radial_point_or_erf, source_potential_field
from scfdata.reference.numba_cache import cached_njit

_MIN_R2 = MIN_SEPARATION**2  # a compile-time constant of the kernels

#: Configs with at most this many atoms are summed by one thread each over their unique pairs; larger
#: configs are split over threads by receiving atom (full rows).
_HALF_LOOP_MAX_ATOMS = 512


@cached_njit(inline="always", error_model="numpy")
def _separation(pos, i, j, beta):
    """r = r_i − r_j, |r|² and the radial kernels g_0..g_3 at |r|."""
    rx = pos[i, 0] - pos[j, 0]
    ry = pos[i, 1] - pos[j, 1]
    rz = pos[i, 2] - pos[j, 2]
    r2 = rx * rx + ry * ry + rz * rz
    g0, g1, g2, g3 = radial_point_or_erf(r2, beta)
    return rx, ry, rz, r2, g0, g1, g2, g3


@cached_njit(parallel=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _small_configs(pos, q, p, pc, t, starts, ends, beta, v, e):
    """Configs [starts[k], ends[k]): one config per thread, each unique pair once, added to both atoms."""
    for k in numba.prange(starts.shape[0]):
        for i in range(starts[k], ends[k]):
            vi = exi = eyi = ezi = 0.0
            r2min = math.inf
            for j in range(i + 1, ends[k]):
                rx, ry, rz, r2, g0, g1, g2, g3 = _separation(pos, i, j, beta)
                r2min = min(r2min, r2)
                dv, dx, dy, dz = source_potential_field(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e)
                vi, exi, eyi, ezi = vi + dv, exi + dx, eyi + dy, ezi + dz
                dv, dx, dy, dz = source_potential_field(i, -rx, -ry, -rz, g0, g1, g2, g3, q, p, pc, t, e)
                v[j] += dv
                if e is not None:
                    e[j, 0] += dx
                    e[j, 1] += dy
                    e[j, 2] += dz
            v[i] += vi if r2min >= _MIN_R2 else math.nan  # a coincident pair: reported by the caller
            if e is not None:
                e[i, 0] += exi
                e[i, 1] += eyi
                e[i, 2] += ezi


@cached_njit(parallel=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _large_config_rows(pos, q, p, pc, t, rows, starts, ends, beta, v, e):
    """Receiving atoms ``rows`` (each with its config's [starts, ends)): one full row per thread."""
    for k in numba.prange(rows.shape[0]):
        i = rows[k]
        vi = exi = eyi = ezi = 0.0
        r2min = math.inf
        for j in range(starts[k], ends[k]):
            if j != i:
                rx, ry, rz, r2, g0, g1, g2, g3 = _separation(pos, i, j, beta)
                r2min = min(r2min, r2)
                dv, dx, dy, dz = source_potential_field(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e)
                vi, exi, eyi, ezi = vi + dv, exi + dx, eyi + dy, ezi + dz
        v[i] = vi if r2min >= _MIN_R2 else math.nan
        if e is not None:
            e[i, 0] = exi
            e[i, 1] = eyi
            e[i, 2] = ezi


def direct_sum(pos, q, p, t, ptr, beta: float, with_fields: bool, dipole_columns=(0, 1, 2)):
    """Potential (n,) and field (n, 3) or None at every atom, in units of k_e (no self term).

    pos (n, 3), q (n,), p (n, >=3) with p_x, p_y, p_z in ``dipole_columns`` or None, t (n, 3, 3) traceless
    or None: float64 numpy arrays (views of wider arrays are read in place, no copy); ptr
    (n_configs + 1,) int64 atom pointer; ``beta`` = 1/(√2σ), 0 or None for point multipoles. Each
    combination of present inputs (p, t, fields, point or Gaussian) is its own compiled (and cached) kernel.
    """
    n = pos.shape[0]
    pos, q = np.asarray(pos, dtype=np.float64), np.asarray(q, dtype=np.float64)
    p = None if p is None else np.asarray(p, dtype=np.float64)
    t = None if t is None else np.asarray(t, dtype=np.float64)
    pc = tuple(int(c) for c in dipole_columns)
    beta = float(beta) if beta else None  # None: point multipoles (compiled as its own variant)
    v = np.zeros(n)
    e = np.zeros((n, 3)) if with_fields else None
    ptr = np.asarray(ptr, dtype=np.int64)
    counts = np.diff(ptr)
    small = np.flatnonzero((counts > 1) & (counts <= _HALF_LOOP_MAX_ATOMS))
    if small.size:
        _small_configs(pos, q, p, pc, t, ptr[small], ptr[small + 1], beta, v, e)
    large = np.flatnonzero(counts > _HALF_LOOP_MAX_ATOMS)
    if large.size:
        sizes = counts[large]
        rows = np.repeat(ptr[large] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(sizes.sum())
        starts, ends = np.repeat(ptr[large], sizes), np.repeat(ptr[large + 1], sizes)
        _large_config_rows(pos, q, p, pc, t, rows, starts, ends, beta, v, e)
    return v, e
