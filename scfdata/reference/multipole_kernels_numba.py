"""Per-pair multipole kernels compiled with numba, shared by the CPU loops of the open-boundary direct sum
(:mod:`scfdata.reference.direct_sum_numba`) and of the batched Ewald sum (:mod:`scfdata.reference.ewald_numba`).

The same physics as :mod:`scfdata.reference.multipole_kernels` (numpy/torch arrays), written for one pair:
radial kernels ``g_0 = f``, ``g_{n+1} = (1/r) dg_n/dr`` of f = 1/r, erfc(ar)/r or erf(βr)/r, and with
r = r_i − r_j, in units of k_e::

    V_i += q_j g_0 − (p_j·r) g_1 + (r·Θ_j·r) g_2 / 3
    E_i += −q_j g_1 r + p_j g_1 + (p_j·r) g_2 r − (2/3) g_2 Θ_j r − (r·Θ_j·r) g_3 r / 3

These functions are inlined into the loops of the two modules above; their compiled code is cached under a
key that includes the content of this file (:mod:`scfdata.reference.numba_cache`), so editing a kernel
here recompiles those loops (numba alone would keep the old code: its cache follows the caller's file).
"""

from __future__ import annotations

import math

from scfdata.reference.numba_cache import cached_njit

_SQRT_PI = math.sqrt(math.pi)


@cached_njit(inline="always", error_model="numpy")
def radial_point(r2):
    """g_0..g_3 of 1/r at squared distance r2 > 0: (−1)^n (2n−1)!! / r^(2n+1)."""
    ir = 1.0 / math.sqrt(r2)
    ir2 = ir * ir
    g1 = -ir * ir2
    g2 = -3.0 * g1 * ir2
    return ir, g1, g2, -5.0 * g2 * ir2


@cached_njit(inline="always", error_model="numpy")
def radial_erfc(r2, a):
    """g_0..g_3 of erfc(a r)/r at squared distance r2 > 0 (stable upward recursion for B_n = (−1)^n g_n)."""
    a2 = a * a
    r = math.sqrt(r2)
    ir2 = 1.0 / r2
    expo = math.exp(-a2 * r2) / (a * _SQRT_PI)
    b0 = math.erfc(a * r) / r
    b1 = (b0 + 2.0 * a2 * expo) * ir2
    b2 = (3.0 * b1 + 4.0 * a2 * a2 * expo) * ir2
    b3 = (5.0 * b2 + 8.0 * a2 * a2 * a2 * expo) * ir2
    return b0, -b1, b2, -b3


@cached_njit(inline="always", error_model="numpy")
def radial_point_or_erf(r2, beta):
    """g_0..g_3 at squared distance r2 > 0: of 1/r when beta is None, else of erf(beta r)/r."""
    if beta is None:
        return radial_point(r2)
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
    c0, c1, c2, c3 = radial_point(r2)  # 1/r − erfc(βr)/r
    b0, b1, b2, b3 = radial_erfc(r2, beta)
    return c0 - b0, c1 - b1, c2 - b2, c3 - b3


@cached_njit(inline="always", error_model="numpy")
def source_potential_field(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e):
    """Potential and field (units of k_e) at r_j + (rx, ry, rz) from source atom j, given the radial kernels
    g_n at that distance. The field only when the output ``e`` is an array; p, t and e may be None (numba
    compiles those branches away); the dipole of atom j is (p[j, pc[0]], p[j, pc[1]], p[j, pc[2]])."""
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


