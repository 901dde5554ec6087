"""Open-boundary direct sum compiled for the CPU (numba): potential and field at every atom from every other
atom of its config, one fused loop over pairs, no pair list and no (n, n) arrays in memory.

The physics is that of :mod:`scfdata.reference.multipole_kernels`, written per pair: with r = r_i − r_j,
the radial kernels g_0..g_3 of f = 1/r (point multipoles, ``beta = 0``) or f = erf(βr)/r (MACE_SCF's
Gaussian-type multipoles, β = 1/(√2σ)), and, in units of k_e,

    V_i += q_j g_0 − (p_j·r) g_1 + (r·Θ_j·r) g_2 / 3
    E_i += −q_j g_1 r + p_j g_1 + (p_j·r) g_2 r − (2/3) g_2 Θ_j r − (r·Θ_j·r) g_3 r / 3

Every pair is visited once and added to both atoms (r → −r for the reverse direction). Configs of up to
``_HALF_LOOP_MAX_ATOMS`` atoms run one config per thread; larger ones one receiving atom per thread (each
thread sums a whole row, so the results do not depend on the thread count). A pair at distance zero gives
NaN at one of its atoms (the caller reports it). The compiled code is
cached on disk (``cache=True``): the first call with a new combination of inputs (dipoles or not, fields or
not, array layouts) compiles for ~2 s, once per machine.
Not supported: l > 2, per-atom widths, devices other than the CPU (the torch engine of
:mod:`scfdata.reference.esp_realspace` runs there).
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Configs with at most this many atoms are summed by one thread each over their unique pairs; larger
#: configs are split over threads by receiving atom (full rows).
_HALF_LOOP_MAX_ATOMS = 512

_SQRT_PI = math.sqrt(math.pi)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _radial(r2, beta):
    """g_0..g_3 at squared distance r2 > 0: of 1/r when beta is None, else of erf(beta r)/r."""
    if beta is None:
        ir = 1.0 / math.sqrt(r2)
        ir2 = ir * ir
        g1 = -ir * ir2
        g2 = -3.0 * g1 * ir2
        return ir, g1, g2, -5.0 * g2 * ir2
    a2 = beta * beta
    x = a2 * r2
    pref = 2.0 * beta / _SQRT_PI
    if x < 0.25:  # Taylor series: g_n = (2β/√π)(−2β²)^n Σ_k (−x)^k / (k! (2k + 2n + 1)), no cancellation
        s0 = s1 = s2 = s3 = 0.0
        term = 1.0
        for k in range(16):
            s0 += term / (2 * k + 1)
            s1 += term / (2 * k + 3)
            s2 += term / (2 * k + 5)
            s3 += term / (2 * k + 7)
            term *= -x / (k + 1)
        m = -2.0 * a2
        return pref * s0, pref * m * s1, pref * m * m * s2, pref * m * m * m * s3
    # 1/r − erfc(βr)/r; erfc's kernels B_n = (−1)^n g_n by the stable upward recursion
    r = math.sqrt(r2)
    ir2 = 1.0 / r2
    expo = math.exp(-x) / (beta * _SQRT_PI)
    b0 = math.erfc(beta * r) / r
    b1 = (b0 + 2.0 * a2 * expo) * ir2
    b2 = (3.0 * b1 + 4.0 * a2 * a2 * expo) * ir2
    b3 = (5.0 * b2 + 8.0 * a2 * a2 * a2 * expo) * ir2
    c0 = 1.0 / r
    c1 = c0 * ir2
    c2 = 3.0 * c1 * ir2
    c3 = 5.0 * c2 * ir2
    return c0 - b0, b1 - c1, c2 - b2, b3 - c3


@numba.njit(cache=True, inline="always", error_model="numpy")
def _from_source(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e):
    """Potential and field (units of k_e) at r_j + (rx, ry, rz) from source atom j (field only when the
    output ``e`` is an array; p, t and e may be None, which numba compiles away)."""
    v = q[j] * g0
    ex = ey = ez = 0.0
    if e is not None:
        c = -q[j] * g1
        ex, ey, ez = c * rx, c * ry, c * rz
    if p is not None:
        px, py, pz = p[j, pc[0]], p[j, pc[1]], p[j, pc[2]]
        pr = px * rx + py * ry + pz * rz
        v -= pr * g1
        if e is not None:
            c = pr * g2
            ex += px * g1 + c * rx
            ey += py * g1 + c * ry
            ez += pz * g1 + c * rz
    if t is not None:
        tx = t[j, 0, 0] * rx + t[j, 0, 1] * ry + t[j, 0, 2] * rz
        ty = t[j, 1, 0] * rx + t[j, 1, 1] * ry + t[j, 1, 2] * rz
        tz = t[j, 2, 0] * rx + t[j, 2, 1] * ry + t[j, 2, 2] * rz
        rtr = rx * tx + ry * ty + rz * tz
        v += rtr * g2 / 3.0
        if e is not None:
            a = 2.0 / 3.0 * g2
            c = rtr * g3 / 3.0
            ex -= a * tx + c * rx
            ey -= a * ty + c * ry
            ez -= a * tz + c * rz
    return v, ex, ey, ez


@numba.njit(cache=True, inline="always", error_model="numpy")
def _separation(pos, i, j, beta):
    """r = r_i − r_j, |r|² and the radial kernels g_0..g_3 at |r|."""
    rx = pos[i, 0] - pos[j, 0]
    ry = pos[i, 1] - pos[j, 1]
    rz = pos[i, 2] - pos[j, 2]
    r2 = rx * rx + ry * ry + rz * rz
    g0, g1, g2, g3 = _radial(r2, beta)
    return rx, ry, rz, r2, g0, g1, g2, g3


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _small_configs(pos, q, p, pc, t, starts, ends, beta, v, e):
    """Configs [starts[k], ends[k]): one config per thread, each unique pair once, added to both atoms."""
    for k in numba.prange(starts.shape[0]):
        for i in range(starts[k], ends[k]):
            vi = exi = eyi = ezi = 0.0
            r2min = math.inf
            for j in range(i + 1, ends[k]):
                rx, ry, rz, r2, g0, g1, g2, g3 = _separation(pos, i, j, beta)
                r2min = min(r2min, r2)
                dv, dx, dy, dz = _from_source(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e)
                vi, exi, eyi, ezi = vi + dv, exi + dx, eyi + dy, ezi + dz
                dv, dx, dy, dz = _from_source(i, -rx, -ry, -rz, g0, g1, g2, g3, q, p, pc, t, e)
                v[j] += dv
                if e is not None:
                    e[j, 0] += dx
                    e[j, 1] += dy
                    e[j, 2] += dz
            v[i] += vi if r2min > 0.0 else math.nan  # a coincident pair: reported by the caller
            if e is not None:
                e[i, 0] += exi
                e[i, 1] += eyi
                e[i, 2] += ezi


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
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
                dv, dx, dy, dz = _from_source(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e)
                vi, exi, eyi, ezi = vi + dv, exi + dx, eyi + dy, ezi + dz
        v[i] = vi if r2min > 0.0 else math.nan
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
    beta = float(beta) if beta else None
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
