"""Plain Ewald sums of many small periodic cells at once, compiled for the CPU (numba): one thread per cell,
no Python per config, no pair list in memory.

The same method, parameters and gauge as :mod:`scfdata.reference.ewald` (tin-foil, neutralising background
for charged cells, zero cell-average potential; point or Gaussian multipoles up to l = 2; parameters chosen
per cell from ``tolerance`` by :func:`~scfdata.reference.ewald.parameters_from_sums`), so the two agree to
rounding; this one is what :func:`~scfdata.reference.esp.compute_esps` runs for cells below
``PME_MIN_ATOMS`` atoms, all of a batch in one call.

* Real space: for every pair (i, j) of a cell, the images j + n·cell within r_cut, with the range of each
  lattice index n_a bounded per pair from the fractional separation (|Δf_a + n_a| ≤ r_cut/d_a, d_a the
  spacing of lattice planes); kernel erfc(γr)/r − erfc(βr)/r; the self pair (i, i, n = 0) left out.
* Reciprocal space: half of the k vectors 0 < |k| ≤ k_cut, structure factors S(k) = Σ_j (a_j − i b_j)
  e^{−ik·r_j} with a_j = q_j − (k·Θ_j·k)/3 and b_j = p_j·k; e^{ik·r_j} as products of powers of
  e^{2πi f_ja} (no sine or cosine per atom and k).

Compiled once per machine and version of the sources: the on-disk cache is keyed by the content of every
module of ``scfdata/reference`` (:mod:`scfdata.reference.numba_cache`), so an edit of the inlined kernels or
of ``MIN_SEPARATION`` recompiles these loops too.

Not supported: l > 2, 1D/2D periodicity, per-atom widths, devices other than the CPU.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from scfdata.reference.batch import raise_if_bad_cells, raise_if_not_finite, raise_if_not_traceless
from scfdata.reference.ewald import parameters_from_sums
from scfdata.reference.multipole_kernels import MIN_SEPARATION, add_self_and_scale, g_erf_at_zero
from scfdata.reference.multipole_kernels_numba import radial_erfc, source_potential_field
from scfdata.reference.numba_cache import cached_njit

_MIN_R2 = MIN_SEPARATION**2  # a compile-time constant of the kernels


@cached_njit(inline="always", error_model="numpy")
def _index_range(df, reach):
    """Integers n with |df + n| <= reach."""
    return math.ceil(-reach - df), math.floor(reach - df)


@cached_njit(error_model="numpy")
def _real_space(c, frac, cells, spacing, q, p, pc, t, a, b, gamma, beta, r_cut, v, e):
    """Real-space part of cell ``c`` (atoms a..b−1), added to v (and e): Σ over images within r_cut."""
    cell = cells[c]
    rc2 = r_cut * r_cut
    reach = (r_cut / spacing[c, 0], r_cut / spacing[c, 1], r_cut / spacing[c, 2])
    for i in range(a, b):
        vi = exi = eyi = ezi = 0.0
        r2min = math.inf
        for j in range(a, b):
            d0, d1, d2 = frac[i, 0] - frac[j, 0], frac[i, 1] - frac[j, 1], frac[i, 2] - frac[j, 2]
            lo0, hi0 = _index_range(d0, reach[0])
            lo1, hi1 = _index_range(d1, reach[1])
            lo2, hi2 = _index_range(d2, reach[2])
            for n0 in range(lo0, hi0 + 1):
                for n1 in range(lo1, hi1 + 1):
                    for n2 in range(lo2, hi2 + 1):
                        if i == j and n0 == 0 and n1 == 0 and n2 == 0:
                            continue
                        f0, f1, f2 = d0 + n0, d1 + n1, d2 + n2
                        rx = f0 * cell[0, 0] + f1 * cell[1, 0] + f2 * cell[2, 0]
                        ry = f0 * cell[0, 1] + f1 * cell[1, 1] + f2 * cell[2, 1]
                        rz = f0 * cell[0, 2] + f1 * cell[1, 2] + f2 * cell[2, 2]
                        r2 = rx * rx + ry * ry + rz * rz
                        if r2 > rc2:
                            continue
                        r2min = min(r2min, r2)
                        g0, g1, g2, g3 = radial_erfc(r2, gamma)
                        if beta is not None:
                            h0, h1, h2, h3 = radial_erfc(r2, beta)
                            g0, g1, g2, g3 = g0 - h0, g1 - h1, g2 - h2, g3 - h3
                        dv, dx, dy, dz = source_potential_field(j, rx, ry, rz, g0, g1, g2, g3, q, p, pc, t, e)
                        vi, exi, eyi, ezi = vi + dv, exi + dx, eyi + dy, ezi + dz
        v[i] += vi if r2min >= _MIN_R2 else math.nan  # an atom on top of another (or an image): reported
        if e is not None:
            e[i, 0] += exi
            e[i, 1] += eyi
            e[i, 2] += ezi


@cached_njit(error_model="numpy")
def _reciprocal(c, frac, recip, volume, q, p, pc, t, a, b, gamma, k_cut, hmax, v, e):
    """Reciprocal part of cell ``c`` (atoms a..b−1): (8π/V) Σ_{half k} exp(−k²/4γ²)/k² Re[e^{ik·r_i} S(k)]."""
    n = b - a
    h0, h1, h2 = hmax[c, 0], hmax[c, 1], hmax[c, 2]
    # e^{i h 2π f_a} for h = −hmax..hmax, per atom and lattice direction
    pw0 = np.empty((n, 2 * h0 + 1), dtype=np.complex128)
    pw1 = np.empty((n, 2 * h1 + 1), dtype=np.complex128)
    pw2 = np.empty((n, 2 * h2 + 1), dtype=np.complex128)
    for pw, hm, col in ((pw0, h0, 0), (pw1, h1, 1), (pw2, h2, 2)):
        for jj in range(n):
            step = complex(math.cos(2.0 * math.pi * frac[a + jj, col]), math.sin(2.0 * math.pi * frac[a + jj, col]))
            pw[jj, hm] = 1.0
            for h in range(1, hm + 1):
                pw[jj, hm + h] = pw[jj, hm + h - 1] * step
                pw[jj, hm - h] = pw[jj, hm - h + 1] * step.conjugate()
    phase = np.empty(n, dtype=np.complex128)
    kc2 = k_cut * k_cut
    for m0 in range(0, h0 + 1):
        for m1 in range(-h1, h1 + 1):
            for m2 in range(-h2, h2 + 1):
                if m0 == 0 and (m1 < 0 or (m1 == 0 and m2 <= 0)):
                    continue  # the other half space (and k = 0)
                kx = m0 * recip[c, 0, 0] + m1 * recip[c, 1, 0] + m2 * recip[c, 2, 0]
                ky = m0 * recip[c, 0, 1] + m1 * recip[c, 1, 1] + m2 * recip[c, 2, 1]
                kz = m0 * recip[c, 0, 2] + m1 * recip[c, 1, 2] + m2 * recip[c, 2, 2]
                k2 = kx * kx + ky * ky + kz * kz
                if k2 > kc2:
                    continue
                wk = 8.0 * math.pi / volume[c] * math.exp(-k2 / (4.0 * gamma * gamma)) / k2
                s = 0.0j
                for jj in range(n):
                    j = a + jj
                    ph = pw0[jj, h0 + m0] * pw1[jj, h1 + m1] * pw2[jj, h2 + m2]
                    phase[jj] = ph
                    amp_re = q[j]
                    amp_im = 0.0
                    if t is not None:
                        amp_re -= (kx * (t[j, 0, 0] * kx + t[j, 0, 1] * ky + t[j, 0, 2] * kz)
                                   + ky * (t[j, 1, 0] * kx + t[j, 1, 1] * ky + t[j, 1, 2] * kz)
                                   + kz * (t[j, 2, 0] * kx + t[j, 2, 1] * ky + t[j, 2, 2] * kz)) / 3.0
                    if p is not None:
                        amp_im = -(p[j, pc[0]] * kx + p[j, pc[1]] * ky + p[j, pc[2]] * kz)
                    s += complex(amp_re, amp_im) * ph.conjugate()
                s *= wk
                for jj in range(n):
                    z = phase[jj] * s
                    v[a + jj] += z.real
                    if e is not None:
                        e[a + jj, 0] += z.imag * kx
                        e[a + jj, 1] += z.imag * ky
                        e[a + jj, 2] += z.imag * kz


@cached_njit(parallel=True, error_model="numpy")
def _cells(frac, cells, spacing, recip, volume, hmax, q, p, pc, t, ptr, gamma, beta, r_cut, k_cut, v, e):
    """Real and reciprocal parts of every cell, one cell per thread (units of k_e; the self pair's long-range
    part is removed by the caller)."""
    for c in numba.prange(ptr.shape[0] - 1):
        a, b = ptr[c], ptr[c + 1]
        if b == a:
            continue
        if beta is None or gamma[c] < beta:
            _real_space(c, frac, cells, spacing, q, p, pc, t, a, b, gamma[c], beta, r_cut[c], v, e)
        _reciprocal(c, frac, recip, volume, q, p, pc, t, a, b, gamma[c], k_cut[c], hmax, v, e)


def _sum_sq_per_config(x, cfg, n_cfg):
    """Σ over each config's atoms of the squared entries of x (None -> None)."""
    if x is None:
        return None
    sq = (np.asarray(x).reshape(x.shape[0], -1) ** 2).sum(axis=1)
    return np.bincount(cfg, weights=sq, minlength=n_cfg)


def ewald_many(positions, charges, dipoles, quadrupoles, ptr, cells, *, smearing_width=0.0,
               self_interaction="exclude", tolerance=1e-6, with_fields=False, config_index=None):
    """Potential (V) and field (V/Å, or None) at the atoms of many periodic cells, numpy float64.

    positions (n, 3) Å, charges (n,), dipoles (n, 3) Cartesian or None, quadrupoles (n, 3, 3) traceless Θ
    or None, ptr (n_cells + 1,) atom pointer, cells (n_cells, 3, 3) rows are cell vectors; the other
    arguments as in :func:`scfdata.reference.ewald.ewald_potential_field`. Raises ValueError, naming the
    config by ``config_index[c]`` (the caller's numbering; default c), for non-finite inputs, a cell without
    volume, or two atoms (or an atom and an image of another) closer than ``MIN_SEPARATION`` — the last only where a
    real-space part is summed (γ < β): with wide Gaussians (pure reciprocal sum, e.g. σ = 1.5 Å) coincident
    atoms give finite values, as the smeared densities do.
    """
    if self_interaction not in ("exclude", "include"):
        raise ValueError(f"Unknown self_interaction {self_interaction!r}. Must be 'exclude' or 'include'.")
    sigma = float(smearing_width)
    if self_interaction == "include" and not sigma > 0:
        raise ValueError("self_interaction='include' needs smearing_width > 0")
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    q = np.ascontiguousarray(charges, dtype=np.float64).reshape(-1)
    p = None if dipoles is None else np.ascontiguousarray(dipoles, dtype=np.float64)
    t = None if quadrupoles is None else np.ascontiguousarray(quadrupoles, dtype=np.float64)
    ptr = np.asarray(ptr, dtype=np.int64)
    cells = np.ascontiguousarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    n, n_cfg = pos.shape[0], ptr.shape[0] - 1
    if ptr.ndim != 1 or n_cfg < 0 or ptr[0] != 0 or ptr[-1] != n or np.any(np.diff(ptr) < 0):
        raise ValueError(f"`ptr` must rise from 0 to n_atoms={n}, got {ptr[:4].tolist()}... (length {ptr.size})")
    for name, arr, tail in (("positions", pos, (3,)), ("charges", q, ()), ("dipoles", p, (3,)),
                            ("quadrupoles", t, (3, 3))):
        if arr is not None and arr.shape != (n, *tail):
            raise ValueError(f"`{name}` must have shape {[n, *tail]}, got {list(arr.shape)}")
    if cells.shape[0] != n_cfg:
        raise ValueError(f"`cells` must have one (3, 3) cell per config ({n_cfg}), got {cells.shape[0]}")
    counts = np.diff(ptr)
    if n == 0:
        return np.zeros(0), (np.zeros((0, 3)) if with_fields else None)
    label = np.arange(n_cfg) if config_index is None else np.asarray(config_index)
    raise_if_not_finite(ptr, label, positions=pos, charges=q, dipoles=p, quadrupoles=t)
    raise_if_not_traceless(t, ptr, label)
    raise_if_bad_cells(cells, label)
    cfg = np.repeat(np.arange(n_cfg), counts)

    volume = np.abs(np.linalg.det(cells))
    inv = np.linalg.inv(cells)
    beta = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else None
    prm = parameters_from_sums(volume, counts, _sum_sq_per_config(q, cfg, n_cfg), _sum_sq_per_config(p, cfg, n_cfg),
                               _sum_sq_per_config(t, cfg, n_cfg), sigma, tolerance)
    gamma = np.ascontiguousarray(prm["gamma"], dtype=np.float64)
    spacing = 1.0 / np.linalg.norm(inv, axis=1)  # 1/|column a of inv|: distance between lattice planes a
    hmax = np.floor(prm["k_cut"][:, None] * np.linalg.norm(cells, axis=2) / (2 * math.pi)).astype(np.int64)
    frac = np.einsum("na,nab->nb", pos, inv[cfg])
    frac -= np.floor(frac)

    v = np.zeros(n)
    e = np.zeros((n, 3)) if with_fields else None
    _cells(frac, cells, np.ascontiguousarray(spacing), np.ascontiguousarray(2 * math.pi * inv.transpose(0, 2, 1)),
           volume, hmax, q, p, (0, 1, 2), t, ptr, gamma, beta, np.ascontiguousarray(prm["r_cut"]),
           np.ascontiguousarray(prm["k_cut"]), v, e)
    if not np.isfinite(v).all():
        c = int(cfg[np.flatnonzero(~np.isfinite(v))[0]])
        raise ValueError(
            f"config {int(label[c])}: two atoms, or an atom and a periodic image of another, sit at the same position "
            f"(closer than {MIN_SEPARATION:g} Å); the ESP is undefined: remove the duplicate atom or drop the config"
        )
    # the self pair's long-range part, and the neutralising background (β = ∞: no 1/β² term)
    g_atom = gamma[cfg]
    v -= q * g_erf_at_zero(g_atom, 0)
    total = np.bincount(cfg, weights=q, minlength=n_cfg)
    inv_b2 = 0.0 if beta is None else 1.0 / beta**2
    v -= (math.pi * total / volume * (1.0 / gamma**2 - inv_b2))[cfg]
    if e is not None and p is not None:
        e -= p * g_erf_at_zero(g_atom, 1)[:, None]
    add_self_and_scale(v, e, q, p, sigma, self_interaction == "include")
    return v, e
