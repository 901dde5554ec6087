"""Multipole interaction kernels shared by the real-space sums (open boundary, and the real-space part of
Ewald/PME): radial kernels g_n of 1/r, erf(a r)/r and erfc(a r)/r, the pair potential/field of
charges, dipoles and quadrupoles, scatter-adds and the Gaussian self term.

Each atom carries a charge q, a Cartesian dipole p and a traceless Cartesian quadrupole Θ
(``Θ = ∫ρ (3rr − r²I)/2``; see :mod:`scfdata.reference.multipoles`). For a source at the origin the
potential at r is (in units of k_e)::

    V(r) = q f(r) − p·∇f(r) + (1/3) Θ:∇∇f(r)

with ``f = 1/r`` for point multipoles (σ = 0) and ``f = erf(r/(√2σ))/r`` for the Gaussian-type-orbital
multipoles of MACE_SCF (σ > 0; each basis function carries one unit of its multipole: the smeared
l-pole density is the same differential operator applied to a normalised Gaussian). Derivatives of a
radial function are written with ``g_0 = f``, ``g_{n+1} = (1/r) dg_n/dr``, so that
``∂_a f = r_a g_1``, ``∂_a∂_b f = δ_ab g_1 + r_a r_b g_2``, ``∂_a∂_b∂_c f = (δ r)_sym g_2 + r_a r_b r_c g_3``.
Fields are ``E = −∇V`` at the receiving atom (V/Å).

Every function works on numpy arrays and on torch tensors alike (ewald.py calls them with numpy,
realspace_torch.py with torch; torch is imported only for tensors). The compiled CPU loops use the same
formulas written per pair in :mod:`scfdata.reference.multipole_kernels_numba`. Not supported: l > 2.
"""

from __future__ import annotations

import math

import numpy as np

from scfdata.constants import K_E

SQRT_PI = math.sqrt(math.pi)

#: Two atoms of a config (or an atom and a periodic image of another) closer than this (Å) are reported as
#: sitting at the same position, by every engine: the ESP of point multipoles is undefined there, and below
#: it round-off of the coordinates (e.g. through fractional coordinates) rather than the data decides the
#: result. Real structures are far apart (ingest rejects atoms closer than 0.1 Å).
MIN_SEPARATION = 1e-6


def is_torch(x) -> bool:
    """A torch tensor? (checked without importing torch, so numpy-only callers never load it)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def g_coulomb(r, nmax: int) -> list:
    """g_n, n = 0..nmax, of f = 1/r: g_n = (−1)^n (2n−1)!! / r^(2n+1)."""
    inv_r = 1.0 / r
    out = [inv_r]
    if nmax > 0:
        inv_r2 = inv_r * inv_r
        for n in range(1, nmax + 1):
            out.append(out[-1] * inv_r2 * float(-(2 * n - 1)))
    return out


def g_erfc(r, a: float, nmax: int) -> list:
    """g_n of f = erfc(a r)/r, by the (stable, all-positive) upward recursion for B_n = (−1)^n g_n."""
    inv_r2 = 1.0 / (r * r)
    ar = a * r
    if is_torch(r):
        import torch

        expo = torch.exp(-ar * ar) / (a * SQRT_PI)
        b = torch.special.erfc(ar) / r
    else:
        from scipy.special import erfc  # here only: point multipoles need no scipy (a job's start-up)

        expo = np.exp(-ar * ar) / (a * SQRT_PI)
        b = erfc(ar) / r
    out = [b]
    pref = 1.0
    for n in range(1, nmax + 1):
        pref *= 2.0 * a * a
        b = ((2 * n - 1) * b + pref * expo) * inv_r2
        out.append(b if n % 2 == 0 else -b)
    return out


def g_erf_at_zero(a: float, n: int) -> float:
    """g_n(0) of f = erf(a r)/r: (2a/√π)(−2a²)^n/(2n+1)."""
    return 2.0 * a / SQRT_PI * (-2.0 * a * a) ** n / (2 * n + 1)


def g_erf(r, a: float, nmax: int) -> list:
    """g_n of f = erf(a r)/r; a Taylor series below a·r = 0.5, 1/r − erfc(a r)/r above (no cancellation)."""
    x = (a * r) ** 2
    small = x < 0.25
    with np.errstate(divide="ignore", invalid="ignore"):  # r = 0 is replaced by the series below
        gc, ge = g_coulomb(r, nmax), g_erfc(r, a, nmax)
        out = [c - e for c, e in zip(gc, ge)]  # inaccurate (cancellation, or not finite at r = 0) where small
    if bool(small.any()):
        xs = x[small]
        for n in range(nmax + 1):
            # g_n = (2a/√π)(−2a²)^n Σ_j (−x)^j / (j! (2j+2n+1)),   x = a²r² < 1/4
            acc = xs * 0.0
            term = xs * 0.0 + 1.0
            for j in range(16):
                acc += term / (2 * j + 2 * n + 1)
                term = term * (-xs) / (j + 1)
            out[n][small] = 2.0 * a / SQRT_PI * (-2.0 * a * a) ** n * acc
    return out


# ----------------------------------------------------------------------------- pair kernel


def _einsum(spec, *ops):
    if is_torch(ops[0]):
        import torch

        return torch.einsum(spec, *ops)
    return np.einsum(spec, *ops)


def pair_potential_field(rvec, g, q, p=None, t=None, with_fields=False):
    """Potential (P,) and field (P, 3) at r_i from sources at r_j, rvec = r_i − r_j, in units of k_e.

    ``g`` is the list [g_0, g_1, g_2, g_3] (as far as needed) of the radial kernel at |rvec|;
    q (P,), p (P, 3) or None, t (P, 3, 3) traceless or None. numpy arrays or torch tensors.
    """
    v = q * g[0]
    e = None
    if with_fields:
        e = -(q * g[1])[:, None] * rvec
    if p is not None:
        pr = _einsum("pa,pa->p", p, rvec)
        v = v - pr * g[1]
        if with_fields:
            e = e + p * g[1][:, None] + (pr * g[2])[:, None] * rvec
    if t is not None:
        tr = _einsum("pab,pb->pa", t, rvec)
        rtr = _einsum("pa,pa->p", rvec, tr)
        v = v + rtr * g[2] / 3.0
        if with_fields:
            e = e - (2.0 / 3.0) * g[2][:, None] * tr - (rtr * g[3] / 3.0)[:, None] * rvec
    return v, e


def nmax_needed(have_dipoles: bool, have_quads: bool, with_fields: bool) -> int:
    """Highest radial derivative order needed."""
    return (2 if have_quads else 1 if have_dipoles else 0) + (1 if with_fields else 0)


def accumulate(recv, v, e, n_atoms, esps, fields):
    """Scatter-add pair contributions to receivers (numpy: bincount; torch: index_add_; deterministic on CPU)."""
    if is_torch(esps):
        esps.index_add_(0, recv, v)
        if e is not None:
            fields.index_add_(0, recv, e)
        return
    esps += np.bincount(recv, weights=v, minlength=n_atoms)
    if e is not None:
        for c in range(3):
            fields[:, c] += np.bincount(recv, weights=e[:, c], minlength=n_atoms)


def self_terms(q, p, sigma, with_fields):
    """Value of each atom's own Gaussian density at its centre (σ > 0), in units of k_e."""
    beta = 1.0 / (math.sqrt(2.0) * sigma)
    v = q * g_erf_at_zero(beta, 0)
    e = None
    if with_fields:
        e = q.new_zeros((q.shape[0], 3)) if is_torch(q) else np.zeros((q.shape[0], 3))
        if p is not None:
            e = e + p * g_erf_at_zero(beta, 1)
    return v, e


def add_self_and_scale(esps, fields, q, p, sigma: float, include_self: bool) -> None:
    """In place, on sums in units of k_e: add each atom's own smeared density at its centre when
    ``include_self`` (σ > 0), then convert to V and V/Å (× k_e). ``fields`` may be None."""
    if include_self:
        v, e = self_terms(q, p, sigma, fields is not None)
        esps += v
        if fields is not None:
            fields += e
    esps *= K_E
    if fields is not None:
        fields *= K_E
