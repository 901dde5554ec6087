"""Open-boundary electrostatics: exact direct sum of potentials and fields at atoms, batched over configs.

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

Configs are concatenated with an atom pointer ``ptr``; interactions stay inside a config. The pair list
of all intra-config pairs is generated in chunks of receivers (``np.repeat`` arithmetic, no loop per
config), so memory stays bounded (``max_pairs`` pairs per chunk) for thousands of atoms per config and
for many small molecules alike.

Self term: ``self_interaction="exclude"`` leaves out atom i's own density; ``"include"`` (σ > 0 only)
adds its value at the centre: potential ``k_e q √(2/π)/σ`` (dipole and quadrupole give 0 there) and
field ``−k_e p (4β³/(3√π))``, β = 1/(√2σ), for the atom's own smeared dipole.
Not supported: l > 2, distinct widths per atom or per l.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erfc

from scfdata.constants import K_E

SQRT_PI = math.sqrt(math.pi)
#: Configs with at most this many atoms are evaluated as dense (G, n, n) blocks grouped by size.
_DENSE_MAX_ATOMS = 64

# ----------------------------------------------------------------------------- radial kernels


def g_coulomb(r: np.ndarray, nmax: int) -> list[np.ndarray]:
    """g_n, n = 0..nmax, of f = 1/r: g_n = (−1)^n (2n−1)!! / r^(2n+1)."""
    inv_r2 = 1.0 / (r * r)
    out = [1.0 / r]
    for n in range(1, nmax + 1):
        out.append(-(2 * n - 1) * out[-1] * inv_r2)
    return out


def g_erfc(r: np.ndarray, a: float, nmax: int) -> list[np.ndarray]:
    """g_n of f = erfc(a r)/r, by the (stable, all-positive) upward recursion for B_n = (−1)^n g_n."""
    inv_r2 = 1.0 / (r * r)
    expo = np.exp(-(a * r) ** 2) / (a * SQRT_PI)
    b = erfc(a * r) / r
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


def g_erf(r: np.ndarray, a: float, nmax: int) -> list[np.ndarray]:
    """g_n of f = erf(a r)/r; a Taylor series below a·r = 0.5, 1/r − erfc(a r)/r above (no cancellation)."""
    x = (a * r) ** 2
    small = x < 0.25
    out = [np.empty_like(r) for _ in range(nmax + 1)]
    if np.any(~small):
        rl = r[~small]
        gc, ge = g_coulomb(rl, nmax), g_erfc(rl, a, nmax)
        for n in range(nmax + 1):
            out[n][~small] = gc[n] - ge[n]
    if np.any(small):
        xs = x[small]
        for n in range(nmax + 1):
            # g_n = (2a/√π)(−2a²)^n Σ_j (−x)^j / (j! (2j+2n+1)),   x = a²r² < 1/4
            acc = np.zeros_like(xs)
            term = np.ones_like(xs)
            for j in range(16):
                acc += term / (2 * j + 2 * n + 1)
                term = term * (-xs) / (j + 1)
            out[n][small] = 2.0 * a / SQRT_PI * (-2.0 * a * a) ** n * acc
    return out


# ----------------------------------------------------------------------------- pair kernel


def pair_potential_field(rvec, g, q, p=None, t=None, with_fields=False):
    """Potential (P,) and field (P, 3) at r_i from sources at r_j, rvec = r_i − r_j, in units of k_e.

    ``g`` is the list [g_0, g_1, g_2, g_3] (as far as needed) of the radial kernel at |rvec|;
    q (P,), p (P, 3) or None, t (P, 3, 3) traceless or None.
    """
    v = q * g[0]
    e = None
    if with_fields:
        e = -(q * g[1])[:, None] * rvec
    if p is not None:
        pr = np.einsum("pa,pa->p", p, rvec)
        v -= pr * g[1]
        if with_fields:
            e += p * g[1][:, None] + (pr * g[2])[:, None] * rvec
    if t is not None:
        tr = np.einsum("pab,pb->pa", t, rvec)
        rtr = np.einsum("pa,pa->p", rvec, tr)
        v += rtr * g[2] / 3.0
        if with_fields:
            e -= (2.0 / 3.0) * g[2][:, None] * tr + (rtr * g[3] / 3.0)[:, None] * rvec
    return v, e


def nmax_needed(have_dipoles: bool, have_quads: bool, with_fields: bool) -> int:
    """Highest radial derivative order needed."""
    return (2 if have_quads else 1 if have_dipoles else 0) + (1 if with_fields else 0)


def accumulate(recv, v, e, n_atoms, esps, fields):
    """Scatter-add pair contributions to receivers (bincount: fast and deterministic)."""
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
        e = np.zeros((q.shape[0], 3))
        if p is not None:
            e += p * g_erf_at_zero(beta, 1)
    return v, e


# ----------------------------------------------------------------------------- batched direct sum


def _intra_config_pair_chunks(ptr: np.ndarray, max_pairs: int):
    """Yield (recv, src) index arrays of all ordered pairs i != j inside each config, chunked."""
    counts = np.diff(ptr)
    n = int(ptr[-1])
    if n == 0:
        return
    cfg = np.repeat(np.arange(len(counts)), counts)
    per_atom = counts[cfg]  # pairs per receiver (including the self pair, removed below)
    start = ptr[:-1][cfg]
    cum = np.concatenate([[0], np.cumsum(per_atom)])
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(cum, cum[lo] + max_pairs, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        rows = np.arange(lo, hi)
        reps = per_atom[lo:hi]
        recv = np.repeat(rows, reps)
        offs = np.arange(recv.shape[0]) - np.repeat(cum[lo:hi] - cum[lo], reps)
        src = start[recv] + offs
        keep = src != recv
        yield recv[keep], src[keep]
        lo = hi


def _dense_group(pos, q, p, t, beta, nmax, with_fields):
    """All-pairs kernel for G configs of equal size n: pos (G, n, 3) -> V (G, n), E (G, n, 3) or None."""
    rvec = pos[:, :, None, :] - pos[:, None, :, :]
    r = np.sqrt(np.einsum("gijc,gijc->gij", rvec, rvec))
    n = pos.shape[1]
    r[:, np.arange(n), np.arange(n)] = np.inf  # self pair: every kernel term vanishes
    if np.any(r == 0.0):
        raise ValueError("two atoms of one config sit at the same position; the ESP is undefined")
    g = g_coulomb(r, nmax) if beta is None else g_erf(r, beta, nmax)
    qs = q[:, None, :]
    v = np.einsum("gij,gj->gi", g[0], q)
    e = -np.einsum("gij,gijc->gic", qs * g[1], rvec) if with_fields else None
    if p is not None:
        pr = np.einsum("gijc,gjc->gij", rvec, p)
        v -= np.einsum("gij,gij->gi", pr, g[1])
        if with_fields:
            e += np.einsum("gij,gjc->gic", g[1], p) + np.einsum("gij,gijc->gic", pr * g[2], rvec)
    if t is not None:
        tr = np.einsum("gjab,gijb->gija", t, rvec)
        rtr = np.einsum("gija,gija->gij", rvec, tr)
        v += np.einsum("gij,gij->gi", rtr, g[2]) / 3.0
        if with_fields:
            e -= (2.0 / 3.0) * np.einsum("gij,gija->gia", g[2], tr) + np.einsum("gij,gija->gia", rtr * g[3] / 3.0,
                                                                                rvec)
    return v, e


def _pairs_of_selected(starts, sizes, max_pairs):
    """Pair chunks of the selected (large) configs only, in global atom indices."""
    if sizes.size == 0:
        return
    sub_ptr = np.concatenate([[0], np.cumsum(sizes)])
    offset = np.repeat(starts - sub_ptr[:-1], sizes)
    for recv, src in _intra_config_pair_chunks(sub_ptr, max_pairs):
        yield offset[recv] + recv, offset[src] + src


def realspace_potential_field(
    positions,
    charges,
    dipoles=None,
    quadrupoles=None,
    ptr=None,
    *,
    smearing_width: float = 0.0,
    self_interaction: str = "exclude",
    with_fields: bool = False,
    max_pairs: int = 2_000_000,
):
    """Exact open-boundary potential (V) and field (V/Å) at every atom, batched over configs.

    Parameters
    ----------
    positions : (n_atoms, 3) Å; charges (n_atoms,) e; dipoles (n_atoms, 3) e·Å Cartesian or None;
    quadrupoles (n_atoms, 3, 3) traceless Θ in e·Å² or None; ptr (n_configs+1,) (default: one config).
    smearing_width : σ in Å (0 = point multipoles).
    self_interaction : "exclude" or "include" (σ > 0 only).
    max_pairs : pairs per chunk (memory ~ 300 bytes per pair with quadrupoles and fields).

    Returns
    -------
    esps (n_atoms,), fields (n_atoms, 3) or None.
    """
    pos = np.asarray(positions, dtype=float)
    q = np.asarray(charges, dtype=float).reshape(-1)
    n = pos.shape[0]
    ptr = np.array([0, n], dtype=np.int64) if ptr is None else np.asarray(ptr, dtype=np.int64)
    if self_interaction not in ("exclude", "include"):
        raise ValueError(f"Unknown self_interaction {self_interaction!r}. Must be 'exclude' or 'include'.")
    if self_interaction == "include" and not smearing_width > 0:
        raise ValueError(
            "self_interaction='include' needs smearing_width > 0 (a point charge's own potential is "
            f"infinite); got smearing_width={smearing_width}. Use 'exclude' or set a width."
        )
    sigma = float(smearing_width)
    nmax = nmax_needed(dipoles is not None, quadrupoles is not None, with_fields)
    esps = np.zeros(n)
    fields = np.zeros((n, 3)) if with_fields else None
    beta = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else None
    counts = np.diff(ptr)
    small = (counts > 1) & (counts <= _DENSE_MAX_ATOMS)
    for size in np.unique(counts[small]):
        cfgs = np.flatnonzero(counts == size)
        per_chunk = max(1, max_pairs // int(size * size))
        for c0 in range(0, cfgs.size, per_chunk):
            sel = cfgs[c0 : c0 + per_chunk]
            idx = (ptr[:-1][sel][:, None] + np.arange(size)[None, :]).reshape(-1)
            shp = (sel.size, int(size))
            v, e = _dense_group(
                pos[idx].reshape(*shp, 3), q[idx].reshape(shp),
                None if dipoles is None else dipoles[idx].reshape(*shp, 3),
                None if quadrupoles is None else quadrupoles[idx].reshape(*shp, 3, 3),
                beta, nmax, with_fields,
            )
            esps[idx] += v.reshape(-1)
            if with_fields:
                fields[idx] += e.reshape(-1, 3)
    large = counts > _DENSE_MAX_ATOMS
    for recv, src in _pairs_of_selected(ptr[:-1][large], counts[large], max_pairs):
        rvec = pos[recv] - pos[src]
        r = np.sqrt(np.einsum("pa,pa->p", rvec, rvec))
        if np.any(r == 0.0):
            k = int(np.flatnonzero(r == 0.0)[0])
            raise ValueError(
                f"atoms {int(recv[k])} and {int(src[k])} sit at the same position; the ESP is undefined"
            )
        g = g_coulomb(r, nmax) if beta is None else g_erf(r, beta, nmax)
        v, e = pair_potential_field(
            rvec,
            g,
            q[src],
            None if dipoles is None else dipoles[src],
            None if quadrupoles is None else quadrupoles[src],
            with_fields,
        )
        accumulate(recv, v, e, n, esps, fields)
    if self_interaction == "include":
        v, e = self_terms(q, dipoles, sigma, with_fields)
        esps += v
        if with_fields:
            fields += e
    esps *= K_E
    if with_fields:
        fields *= K_E
    return esps, fields
