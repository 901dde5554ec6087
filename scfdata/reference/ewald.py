"""3D periodic Ewald sum of point or Gaussian multipoles (l <= 2): potential and field at the atoms.

Boundary: tin-foil (conducting) at infinity, i.e. the k = 0 term is dropped. A charged cell gets a uniform
neutralising background. Gauge: the cell average of the potential of (multipoles + background) is zero;
this holds for point and smeared multipoles alike, so the result does not depend on the Ewald splitting.

Splitting. The full pair kernel is ``f = erf(βr)/r`` (β = 1/(√2σ); ``1/r`` for σ = 0). With the Ewald
parameter γ (< β) it is split into a short-range part ``erfc(γr)/r − erfc(βr)/r`` summed over neighbour
pairs (periodic images, cKDTree on the wrapped atoms and the image atoms that lie within the cutoff of the
cell), and a long-range part ``erf(γr)/r`` summed in reciprocal space (``4π/k² exp(−k²/4γ²)`` over a
half space of k vectors, chunked). When β is small enough the optimal γ equals β and the real-space part
vanishes (pure reciprocal sum, as MACE_SCF does for σ = 1.5 Å). The self pair (i, i, n = 0) is excluded
(its long-range part ``k_e q 2γ/√π`` is subtracted; for fields ``k_e p 4γ³/(3√π)`` is added back), and
``self_interaction="include"`` (σ > 0) adds the atom's own smeared density at its centre.

Parameters (γ, real cutoff r_c = s/γ, reciprocal cutoff k_c = 2sγ) are chosen from ``tolerance`` (V):
``exp(−s²) = tolerance / (k_e W)`` with W the root-sum-square of the multipole strengths, plus a margin
for the higher multipoles; γ balances the number of real-space pairs against the number of k vectors.
The user never sets them (a private ``params`` argument exists for tests).

Cost: O(N^1.5) (plain Ewald); memory is bounded by chunking the pairs (``max_pairs``) and the k vectors.
Not supported: l > 2, 1D/2D periodicity (see :mod:`scfdata.reference.slab`), cells with zero volume.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from scfdata.constants import K_E
from scfdata.reference.batch import raise_if_bad_cells, raise_if_not_finite, raise_if_not_traceless
from scfdata.reference.multipole_kernels import (
    MIN_SEPARATION,
    accumulate,
    add_self_and_scale,
    g_erf_at_zero,
    g_erfc,
    nmax_needed,
    pair_potential_field,
)

#: Balance between one real-space pair and one (atom, k-vector) term, measured with numpy (see benchmarks).
_COST_RATIO = 3.0


def _check_cell(cell) -> np.ndarray:
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    raise_if_bad_cells(cell)
    return cell


def choose_parameters(cell, n_atoms, charges, dipoles, quads, sigma, tolerance):
    """Ewald parameters (dict: gamma, r_cut, k_cut, s) for a target absolute potential error in V."""
    cell = _check_cell(cell)
    sums = [None if x is None else float(np.sum(np.asarray(x) ** 2)) for x in (charges, dipoles, quads)]
    prm = parameters_from_sums(abs(np.linalg.det(cell)), n_atoms, *sums, sigma, tolerance)
    return {k: float(v) for k, v in prm.items()}


def parameters_from_sums(vol, n_atoms, sum_q2, sum_p2, sum_t2, sigma, tolerance):
    """:func:`choose_parameters` from the cell volume, atom count and Σq², Σ|p|², Σ|Θ|² (None: no such
    multipoles); every argument but sigma and tolerance may be an array over configs (dict of arrays)."""
    n1 = np.maximum(n_atoms, 1)
    gamma = (_COST_RATIO * 2 * math.pi**3 * n1 / np.asarray(vol, dtype=float) ** 2) ** (1 / 6)
    beta = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else math.inf
    gamma = np.minimum(gamma, beta)
    w2, margin = np.asarray(sum_q2, dtype=float), 0.0
    if sum_p2 is not None:
        w2, margin = w2 + np.asarray(sum_p2) * gamma**2, 0.5
    if sum_t2 is not None:
        w2, margin = w2 + np.asarray(sum_t2) * gamma**4, 1.0
    w = np.maximum(np.sqrt(w2 / n1) * 10.0, 1e-3)  # rms strength, 10x safety (measured errors ~1e-2 tol)
    s = np.sqrt(np.maximum(np.log(K_E * w / tolerance), 1.0)) + margin
    return {"gamma": gamma, "r_cut": s / gamma, "k_cut": 2.0 * s * gamma, "s": s}


def _image_points(pos_w, cell, r_cut):
    """Wrapped atoms and their periodic images within r_cut of the cell: (points, atom index, shift id)."""
    inv = np.linalg.inv(cell)
    spacing = 1.0 / np.linalg.norm(inv, axis=0)  # distance between lattice planes
    nmax = np.ceil(r_cut / spacing).astype(int)
    rng = [np.arange(-m, m + 1) for m in nmax]
    shifts = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    frac = pos_w @ inv
    pad = r_cut / spacing
    pts, atom, sid = [], [], []
    n = pos_w.shape[0]
    for k0 in range(0, shifts.shape[0], max(1, 4_000_000 // max(n, 1))):
        sh = shifts[k0 : k0 + max(1, 4_000_000 // max(n, 1))]
        f = frac[None, :, :] + sh[:, None, :]
        keep = np.all((f > -pad) & (f < 1 + pad), axis=2)
        si, ai = np.nonzero(keep)
        pts.append(f[si, ai] @ cell)
        atom.append(ai)
        sid.append(si + k0)
    zero = int(np.flatnonzero(np.all(shifts == 0, axis=1))[0])
    return np.concatenate(pts), np.concatenate(atom), np.concatenate(sid), zero


def periodic_pairs(pos_w, cell, r_cut, max_pairs=2_000_000):
    """Yield (recv, src, rvec) for all pairs within r_cut, periodic images included, self pair excluded."""
    n = pos_w.shape[0]
    pts, atom, sid, zero = _image_points(pos_w, cell, r_cut)
    tree = cKDTree(pts)
    density = pts.shape[0] / max(abs(np.linalg.det(cell)), 1e-12) / max(pts.shape[0] / n, 1.0)
    per_atom = density * 4.0 / 3.0 * math.pi * r_cut**3 + 1.0
    chunk = int(max(1, min(n, max_pairs // per_atom)))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        sub = cKDTree(pos_w[lo:hi])
        res = sub.sparse_distance_matrix(tree, r_cut, output_type="ndarray")
        recv = res["i"].astype(np.int64) + lo
        img = res["j"].astype(np.int64)
        src = atom[img]
        keep = ~((src == recv) & (sid[img] == zero))
        recv, img, src = recv[keep], img[keep], src[keep]
        yield recv, src, pos_w[recv] - pts[img]


def _kvectors(cell, k_cut):
    """Half-space reciprocal vectors 0 < |k| <= k_cut."""
    recip = 2 * math.pi * np.linalg.inv(cell).T  # rows b_a with a_i · b_j = 2π δ_ij
    nmax = np.floor(k_cut * np.linalg.norm(cell, axis=1) / (2 * math.pi)).astype(int)
    h = np.arange(0, nmax[0] + 1)
    kk = np.arange(-nmax[1], nmax[1] + 1)
    ll = np.arange(-nmax[2], nmax[2] + 1)
    hkl = np.stack(np.meshgrid(h, kk, ll, indexing="ij"), -1).reshape(-1, 3)
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & (hkl[:, 1] > 0)) | (
        (hkl[:, 0] == 0) & (hkl[:, 1] == 0) & (hkl[:, 2] > 0)
    )
    k = hkl[half] @ recip
    k2 = np.einsum("ka,ka->k", k, k)
    keep = k2 <= k_cut**2
    return k[keep], k2[keep]


def reciprocal_potential_field(pos, q, p, t, cell, gamma, k_cut, with_fields, max_elems=2_000_000):
    """k-space part (units of k_e): (4π/V) Σ_{k≠0} exp(−k²/4γ²)/k² Re[S(k) e^{ik·r_i}]."""
    n = pos.shape[0]
    vol = abs(np.linalg.det(cell))
    kvec, k2 = _kvectors(cell, k_cut)
    v = np.zeros(n)
    e = np.zeros((n, 3)) if with_fields else None
    if kvec.shape[0] == 0:
        return v, e
    wk = 8 * math.pi / vol * np.exp(-k2 / (4 * gamma * gamma)) / k2
    step = max(1, max_elems // max(n, 1))
    if t is not None:
        t6 = np.stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], 2 * t[:, 0, 1], 2 * t[:, 0, 2], 2 * t[:, 1, 2]], 1)
    for k0 in range(0, kvec.shape[0], step):
        kc, wc = kvec[k0 : k0 + step], wk[k0 : k0 + step]
        phase = pos @ kc.T  # (n, K)
        c, s = np.cos(phase), np.sin(phase)
        # source amplitude per atom and k: a − i b with a = q − (1/3) kΘk, b = p·k
        if t is None:
            s_re = q @ c
            s_im = -(q @ s)
        else:
            kk6 = np.stack([kc[:, 0] ** 2, kc[:, 1] ** 2, kc[:, 2] ** 2, kc[:, 0] * kc[:, 1],
                            kc[:, 0] * kc[:, 2], kc[:, 1] * kc[:, 2]], 1)
            a = q[:, None] - (t6 @ kk6.T) / 3.0
            s_re = np.einsum("nk,nk->k", a, c)
            s_im = -np.einsum("nk,nk->k", a, s)
        if p is not None:
            b = p @ kc.T
            # S = Σ (c − i s)(a − i b) = Σ (a c − b s) − i (a s + b c)
            s_re -= np.einsum("nk,nk->k", b, s)
            s_im -= np.einsum("nk,nk->k", b, c)
        v += c @ (wc * s_re) - s @ (wc * s_im)
        if with_fields:
            e += (s * (wc * s_re) + c * (wc * s_im)) @ kc
    return v, e


def ewald_potential_field(
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
    params: dict | None = None,
    max_pairs: int = 2_000_000,
):
    """Potential (V) and field (V/Å) at the atoms of ONE periodic cell (rows of ``cell`` are vectors).

    Inputs as in :func:`scfdata.reference.esp_realspace.realspace_potential_field`. ``params`` (dict with
    gamma, r_cut, k_cut) overrides the automatic choice; for tests only.
    """

    def reciprocal(pos_w, q, p, t, cell, gamma, prm, with_fields):
        return reciprocal_potential_field(pos_w, q, p, t, cell, gamma, prm["k_cut"], with_fields)

    return ewald_sum(positions, charges, dipoles, quadrupoles, cell, choose=choose_parameters,
                     reciprocal=reciprocal, smearing_width=smearing_width, self_interaction=self_interaction,
                     tolerance=tolerance, with_fields=with_fields, params=params, max_pairs=max_pairs)


def ewald_sum(positions, charges, dipoles, quadrupoles, cell, *, choose, reciprocal, smearing_width,
              self_interaction, tolerance, with_fields, params, max_pairs):
    """The Ewald split shared by plain Ewald and PME: real-space pairs, the reciprocal part given by
    ``reciprocal(pos_w, q, p, t, cell, gamma, params, with_fields)``, self-pair removal, neutralising
    background and the optional smeared self term; parameters from ``choose(cell, n, q, p, t, σ, tol)``."""
    cell = _check_cell(cell)
    pos = np.asarray(positions, dtype=float)
    q = np.asarray(charges, dtype=float).reshape(-1)
    n = pos.shape[0]
    raise_if_not_finite([0, n], None, positions=pos, charges=q, dipoles=dipoles, quadrupoles=quadrupoles)
    raise_if_not_traceless(quadrupoles, [0, n])
    sigma = float(smearing_width)
    if self_interaction not in ("exclude", "include"):
        raise ValueError(f"Unknown self_interaction {self_interaction!r}. Must be 'exclude' or 'include'.")
    if self_interaction == "include" and not sigma > 0:
        raise ValueError("self_interaction='include' needs smearing_width > 0")
    beta = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else math.inf
    prm = params or choose(cell, n, q, dipoles, quadrupoles, sigma, tolerance)
    gamma = min(prm["gamma"], beta)
    inv = np.linalg.inv(cell)
    frac = pos @ inv
    pos_w = (frac - np.floor(frac)) @ cell
    vol = abs(np.linalg.det(cell))

    esps = np.zeros(n)
    fields = np.zeros((n, 3)) if with_fields else None
    nmax = nmax_needed(dipoles is not None, quadrupoles is not None, with_fields)
    if gamma < beta:
        for recv, src, rvec in periodic_pairs(pos_w, cell, prm["r_cut"], max_pairs):
            r = np.sqrt(np.einsum("pa,pa->p", rvec, rvec))
            if np.any(r < MIN_SEPARATION):
                k = int(np.flatnonzero(r < MIN_SEPARATION)[0])
                raise ValueError(f"atoms {int(recv[k])} and {int(src[k])} (or an image of it) sit at the same position "
                                 f"(closer than {MIN_SEPARATION:g} Å); the ESP is undefined: remove the duplicate "
                                 "atom or drop the config")
            g = g_erfc(r, gamma, nmax)
            if beta < math.inf:
                gb = g_erfc(r, beta, nmax)
                g = [x - y for x, y in zip(g, gb)]
            v, e = pair_potential_field(
                rvec, g, q[src],
                None if dipoles is None else dipoles[src],
                None if quadrupoles is None else quadrupoles[src],
                with_fields,
            )
            accumulate(recv, v, e, n, esps, fields)
    v, e = reciprocal(pos_w, q, dipoles, quadrupoles, cell, gamma, prm, with_fields)
    esps += v
    # remove the self pair's long-range part, add the neutralising background
    esps -= q * g_erf_at_zero(gamma, 0)
    total = q.sum()
    esps -= math.pi * total / vol * (1.0 / gamma**2 - (0.0 if beta == math.inf else 1.0 / beta**2))
    if with_fields:
        fields += e
        if dipoles is not None:
            fields -= dipoles * g_erf_at_zero(gamma, 1)
    add_self_and_scale(esps, fields, q, dipoles, sigma, self_interaction == "include")
    return esps, fields
