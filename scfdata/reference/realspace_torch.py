"""The torch engine of the open-boundary direct sum (:func:`scfdata.reference.esp_realspace.realspace_potential_field`
with ``engine="torch"``, the default for tensors on a GPU): tensors stay on their device.

* Small configs (2 … ``_DENSE_MAX_ATOMS`` atoms) are padded to a few bucket sizes (a multiple of
  ``_BUCKET_STEP``; padding atoms carry nothing and sit far away) and evaluated as dense (G, m, m)
  blocks of the radial kernels g_n (distances from coordinate differences, ``torch.cdist``), in
  cache-sized chunks of ``_CHUNK_ELEMENTS`` matrix entries. The sums over sources are batched matrix
  products: with r_ij = x_i − x_j (x centred per config) every term is a polynomial in x_i times
  ``Σ_j g_n(r_ij) c_j`` with per-source columns c_j, e.g. for dipoles
  ``Σ_j (p_j·r_ij) g_1 = x_i·(G_1 p)_i − (G_1 s)_i`` with ``s_j = p_j·x_j``; quadrupoles and fields
  likewise (:func:`_column_layout`, :func:`_contract`). Per-atom data live in "planes" (component, config,
  slot), so that every elementwise operation runs over whole contiguous planes. Memory is bounded by
  ``_BLOCK_SLOTS`` atom slots of source planes and ``_CHUNK_ELEMENTS`` kernel entries at a time. The
  expansion costs ~(R/d)^nmax ulps (R config radius, d closest pair); for quadrupoles or fields with dipoles
  a config whose R/d exceeds ``_EXPANSION_RATIO``^(1/nmax) is evaluated by the pair list instead.
* Larger configs use a flat list of all intra-config pairs generated in chunks of receivers
  (``max_pairs`` pairs per chunk, so memory stays bounded for thousands of atoms per config).

Sums are in units of k_e, without the self term (the caller adds it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scfdata.reference.multipole_kernels import (
    MIN_SEPARATION,
    accumulate,
    g_coulomb,
    g_erf,
    nmax_needed,
    pair_potential_field,
)

#: Configs with at most this many atoms are evaluated as dense padded (G, m, m) blocks.
_DENSE_MAX_ATOMS = 64
#: Dense block sizes m are the config sizes rounded up to a multiple of this (few groups, little padding).
_BUCKET_STEP = 4
#: Matrix entries (G·m·m) per dense chunk: ~2 MB per float64 array, so each pass stays in cache.
_CHUNK_ELEMENTS = 1 << 18
#: Configs per plane block are limited to this many atom slots (bounds the memory of the source planes).
_BLOCK_SLOTS = 1 << 17
#: The dense path expands r_ij = x_i − x_j about the config's centroid, which costs ~(R/d)^nmax ulps of the
#: largest pair term (R: config radius, d: closest pair, nmax: highest radial order). For nmax >= 2
#: (quadrupoles, or fields with dipoles) configs with R/d above this^(1/nmax) go to the pair list instead
#: (exact to rounding); for nmax = 1 the loss, R/d ulps, stays below 1e-6 V unless atoms are < ~1e-3 Å apart.
_EXPANSION_RATIO = 4.0e3
#: Padding atoms sit on the z axis this far apart (Å), beyond every real atom: never on top of an atom.
_PAD_SPACING = 1.0e3

# ----------------------------------------------------------------------------- dense padded buckets

_SYM = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the 6 independent entries of a symmetric 3x3
_SYM_WEIGHT = (1.0, 1.0, 1.0, 2.0, 2.0, 2.0)  # Σ_ab x_a x_b T_ab = Σ_k w_k x_a x_b T_k


#: Source columns: name -> number of planes. Quadrupoles Θ are stored by their 6 entries in ``_SYM`` order.
_COLUMN_SIZES = {"q": 1, "p": 3, "s": 1, "t": 6, "tx": 3, "xtx": 1, "qx": 3, "xp": 9, "sx": 3, "xt": 18,
                 "xtxv": 9, "xtxx": 3}


def _column_layout(have_p: bool, have_t: bool, with_fields: bool):
    """Which source columns c_j each radial order n needs, and where they sit in the bucket planes.

    Returns ({n: (lo, hi, {name: offset from lo})}, number of planes); planes 0..2 are the coordinates.
    ``(G_n c)_i = Σ_j g_n(r_ij) c_j``; the receiver-side polynomials multiplying them are in
    :func:`_contract`.
    """
    names = {0: ["q"], 1: [], 2: [], 3: []}
    if have_p:
        names[1] += ["p", "s"]  # s = p·x
    if have_t:
        names[2] += ["t", "tx", "xtx"]  # Θx, xΘx
    if with_fields:
        names[1] += ["q", "qx"]
        if have_p:
            names[2] += ["p", "s", "xp", "sx"]  # xp[3a+b] = x_a p_b
        if have_t:
            names[3] += ["t", "tx", "xtx", "xt", "xtxv", "xtxx"]  # xt[6c+k] = x_c Θ_k, xtxv[3c+a] = x_c (Θx)_a
    layout, col = {}, 3
    for order, nm in names.items():
        if nm:
            lo, offsets = col, {}
            for name in nm:
                offsets[name] = col - lo
                col += _COLUMN_SIZES[name]
            layout[order] = (lo, col, offsets)
    return layout, col


def _fill_source_columns(planes, layout, q, p, t, beta):
    """Write the source columns of ``layout`` into ``planes`` (C, G, m), whose planes 0..2 hold x.

    q (G, m), p (3, G, m) or None, t (6, G, m) or None. Each order's columns carry the factor of
    :func:`_radial_scale`.
    """
    x = planes[0:3]

    def dot(u, w):
        out = u[0] * w[0]
        return out.addcmul_(u[1], w[1]).addcmul_(u[2], w[2])

    def theta_x():
        return torch.stack([sum(t[_SYM.index((min(a, b), max(a, b)))] * x[b] for b in range(3)) for a in range(3)])

    recipes = {
        "q": lambda: q[None],
        "p": lambda: p,
        "s": lambda: dot(p, x)[None],
        "t": lambda: t,
        "tx": theta_x,
        "xtx": lambda: dot(value("tx"), x)[None],
        "qx": lambda: q[None] * x,
        "xp": lambda: (x[:, None] * p[None, :]).flatten(0, 1),
        "sx": lambda: value("s") * x,
        "xt": lambda: (x[:, None] * t[None, :]).flatten(0, 1),
        "xtxv": lambda: (x[:, None] * value("tx")[None, :]).flatten(0, 1),
        "xtxx": lambda: value("xtx") * x,
    }
    cache = {}

    def value(name):
        if name not in cache:
            cache[name] = recipes[name]()
        return cache[name]

    for order, (lo, _, offsets) in layout.items():
        scale = _radial_scale(beta, order)
        for name, off in offsets.items():
            torch.mul(value(name), scale, out=planes[lo + off : lo + off + _COLUMN_SIZES[name]])


def _contract(x, a, have_p, have_t, with_fields):
    """Potential (G, m) and field (G, 3, m) at the receivers from ``a(n, name)`` = (G_n c_name)_i (G, k, m).

    ``x`` (G, 3, m) are the receiver coordinates. Sums over Cartesian components run over axis 1, so every
    operation works on whole (G, m) planes (torch is slow at reductions over a trailing axis of length 3).
    """
    v = a(0, "q")[:, 0] - (x * a(1, "p")).sum(1) + a(1, "s")[:, 0] if have_p else a(0, "q")[:, 0].clone()
    xx = None
    if have_t:  # x_a x_b w_ab over the 6 symmetric entries
        ia, ib = [i for i, _ in _SYM], [j for _, j in _SYM]
        xx = x[:, ia] * x[:, ib] * x.new_tensor(_SYM_WEIGHT)[:, None]
        v += ((xx * a(2, "t")).sum(1) - 2.0 * (x * a(2, "tx")).sum(1) + a(2, "xtx")[:, 0]) / 3.0
    if not with_fields:
        return v, None
    g_, _, m = x.shape
    e = a(1, "qx") - x * a(1, "q")  # −Σ_j q_j g1 r_ij
    if have_p:  # Σ_j [p_j g1 + (p_j·r_ij) g2 r_ij]
        w = (x * a(2, "p")).sum(1) - a(2, "s")[:, 0]
        e += a(1, "p") + x * w[:, None] + a(2, "sx")
        e -= (a(2, "xp").view(g_, 3, 3, m) * x[:, None]).sum(2)
    if have_t:  # −(2/3) Σ_j g2 Θ_j r_ij − (1/3) Σ_j g3 (r_ij Θ_j r_ij) r_ij
        full = [_SYM.index((min(c, b), max(c, b))) for c in range(3) for b in range(3)]
        theta_x = (a(2, "t")[:, full].view(g_, 3, 3, m) * x[:, None]).sum(2)
        e -= (2.0 / 3.0) * (theta_x - a(2, "tx"))
        big_w = (xx * a(3, "t")).sum(1) - 2.0 * (x * a(3, "tx")).sum(1) + a(3, "xtx")[:, 0]
        u = (
            (a(3, "xt").view(g_, 3, 6, m) * xx[:, None]).sum(2)
            - 2.0 * (a(3, "xtxv").view(g_, 3, 3, m) * x[:, None]).sum(2)
            + a(3, "xtxx")
        )
        e -= (x * big_w[:, None] - u) / 3.0
    return v, e


def _bucket_plan(counts: np.ndarray, dense_max: int, step: int):
    """Group configs of 2 … dense_max atoms by padded size m: list of (m, config indices)."""
    dense = np.flatnonzero((counts > 1) & (counts <= dense_max))
    if dense.size == 0:
        return []
    m = -(-counts[dense] // step) * step
    order = np.argsort(m, kind="stable")
    dense, m = dense[order], m[order]
    edges = np.flatnonzero(np.diff(m)) + 1
    return [(int(mm[0]), cc) for mm, cc in zip(np.split(m, edges), np.split(dense, edges))]


def _radial_scale(beta, order):
    """Factor folded into the order-n source columns: Coulomb kernels are evaluated as 1/r^(2n+1)."""
    if beta is not None:
        return 1.0
    return float((-1) ** order * math.prod(range(1, 2 * order, 2)))


def _bucket_planes(pos, q, p, t, flat, weight, layout, n_planes, beta):
    """Column planes (C, G, m) of one bucket: x (3 planes, centred per config), then the source columns.

    ``flat`` (G·m,) atom indices (padding slots point at the padding rows), ``weight`` (G, m) 1/size for
    real atoms, 0 for padding; ``layout`` from :func:`_column_layout`.
    """
    g_, m = weight.shape
    planes = torch.empty((n_planes, g_, m), dtype=pos.dtype, device=pos.device)
    xyz = pos.index_select(0, flat).view(g_, m, 3)
    centre = torch.bmm(weight[:, None, :], xyz)  # (G, 1, 3) centroid of each config
    torch.sub(xyz.permute(2, 0, 1), centre.permute(2, 0, 1), out=planes[0:3])
    qg = q.index_select(0, flat).view(g_, m)
    pg = None if p is None else p.index_select(0, flat).view(g_, m, 3).permute(2, 0, 1)
    tg = None
    if t is not None:
        tt = t.index_select(0, flat).view(g_, m, 3, 3)
        tg = torch.stack([tt[..., i, j] for i, j in _SYM])
    _fill_source_columns(planes, layout, qg, pg, tg, beta)
    return planes


def _distances(x):
    """|x_i − x_j| (G, m, m) from the coordinate planes x (3, G, m) (coordinate differences, no Gram
    shortcut: exact to rounding), self pairs +inf, pairs closer than MIN_SEPARATION NaN (reported by the caller)."""
    r = torch.cdist(x.permute(1, 2, 0), x.permute(1, 2, 0), compute_mode="donot_use_mm_for_euclid_dist")
    r.masked_fill_(r < MIN_SEPARATION, math.nan)
    r.diagonal(dim1=1, dim2=2).fill_(math.inf)
    return r


def _dense_chunk(ch, radius2, layout, beta, nmax, have_p, have_t, with_fields):
    """Potential (G, m), field (G, 3, m) or None, and the (G,) configs to redo with the pair list, of one
    chunk of bucket planes ``ch`` (C, G, m); ``radius2`` (G,) is each config's largest |x|²."""
    r = _distances(ch[0:3])
    redo = None
    if nmax > 1:  # the expansion in x_i loses ~(R/d_min)^nmax ulps: close pairs go to the pair list
        redo = r.amin(dim=(1, 2)) ** 2 * _EXPANSION_RATIO ** (2.0 / nmax) < radius2
    if beta is None:  # 1/r^(2n+1); the sign and (2n−1)!! are in the source columns
        g = [r.reciprocal_()]
        if nmax == 1:
            g.append(g[0].pow(3))
        elif nmax > 1:
            inv_r2 = g[0] * g[0]
            for _ in range(nmax):
                g.append(g[-1] * inv_r2)
    else:
        zero = r == 0.0
        if bool(zero.any()):
            r[zero] = math.nan  # the smeared kernel is finite there: make it non-finite, reported in the end
        g = g_erf(r, beta, nmax)
    # (G, K, m) = (G, K, m_src) @ (G, m_src, m_recv): g_n is symmetric in (i, j)
    prods = {order: torch.bmm(ch[lo:hi].permute(1, 0, 2), g[order]) for order, (lo, hi, _) in layout.items()}

    def a(order, name):
        off = layout[order][2][name]
        return prods[order][:, off : off + _COLUMN_SIZES[name]]

    return (*_contract(ch[0:3].permute(1, 0, 2), a, have_p, have_t, with_fields), redo)


def _dense_padded(pos, q, p, t, ptr, counts, beta, nmax, with_fields, esps, fields) -> np.ndarray:
    """All small configs: centred, padded to bucket sizes, dense kernel blocks and batched matmuls.

    Returns the configs left to the pair list (a pair closer than R/_EXPANSION_RATIO^(1/nmax)); their
    atoms receive nothing here.
    """
    plan = _bucket_plan(counts, _DENSE_MAX_ATOMS, _BUCKET_STEP)
    if not plan:
        return np.zeros(0, dtype=np.int64)
    n, dev, dt = pos.shape[0], pos.device, pos.dtype
    m_max = max(m for m, _ in plan)
    # padding atoms: no charge or multipoles, beyond every (finite, checked) atom and far from each other
    pad = torch.zeros((m_max, 3), dtype=dt, device=dev)
    pad[:, 2] = pos.abs().max() + _PAD_SPACING * torch.arange(1, m_max + 1, dtype=dt, device=dev)
    pos = torch.cat([pos, pad])
    q = torch.cat([q, q.new_zeros(m_max)])
    p = None if p is None else torch.cat([p, p.new_zeros((m_max, 3))])
    t = None if t is None else torch.cat([t, t.new_zeros((m_max, 3, 3))])
    layout, n_planes = _column_layout(p is not None, t is not None, with_fields)
    esps_ext = torch.zeros(n + m_max, dtype=dt, device=dev)
    fields_ext = torch.zeros((n + m_max, 3), dtype=dt, device=dev) if with_fields else None
    redo = torch.zeros(counts.size, dtype=torch.bool, device=dev)  # configs left to the pair list
    for m, bucket in plan:
        slot = np.arange(m)
        per_block = max(1, _BLOCK_SLOTS // m)
        per_chunk = max(1, _CHUNK_ELEMENTS // (m * m))
        for b0 in range(0, len(bucket), per_block):
            cfgs = bucket[b0 : b0 + per_block]
            real = slot[None, :] < counts[cfgs][:, None]
            flat = np.where(real, ptr[cfgs][:, None] + slot[None, :], n + slot[None, :]).reshape(-1)
            flat = torch.as_tensor(flat, device=dev)
            weight = torch.as_tensor(real / counts[cfgs][:, None], dtype=dt, device=dev)
            planes = _bucket_planes(pos, q, p, t, flat, weight, layout, n_planes, beta)
            radius2 = cfgs_t = None
            if nmax > 1:  # largest |x|² of each config's real atoms (weight = 1/size on them), for the guard
                radius2 = planes[0] * planes[0]
                radius2 = radius2.addcmul_(planes[1], planes[1]).addcmul_(planes[2], planes[2]).mul_(weight)
                radius2 = radius2.amax(dim=1) * torch.as_tensor(counts[cfgs], dtype=dt, device=dev)
                cfgs_t = torch.as_tensor(cfgs, device=dev)
            v_out = torch.empty((len(cfgs), m), dtype=dt, device=dev)
            e_out = torch.empty((len(cfgs), 3, m), dtype=dt, device=dev) if with_fields else None
            for c0 in range(0, len(cfgs), per_chunk):
                c1 = min(c0 + per_chunk, len(cfgs))
                ch = planes[:, c0:c1]  # (C, Gc, m)
                rad2 = None if radius2 is None else radius2[c0:c1]
                v, e, close = _dense_chunk(ch, rad2, layout, beta, nmax, p is not None, t is not None, with_fields)
                if close is not None:
                    redo[cfgs_t[c0:c1]] = close
                v_out[c0:c1] = v
                if with_fields:
                    e_out[c0:c1] = e
            esps_ext.index_copy_(0, flat, v_out.view(-1))
            if with_fields:
                fields_ext.index_copy_(0, flat, e_out.transpose(1, 2).reshape(-1, 3))
    redo = torch.nonzero(redo)[:, 0].cpu().numpy()
    if redo.size:
        atoms = torch.as_tensor(np.repeat(ptr[redo] - np.cumsum(counts[redo]) + counts[redo], counts[redo])
                                + np.arange(counts[redo].sum()), device=dev)
        esps_ext[atoms] = 0.0
        if with_fields:
            fields_ext[atoms] = 0.0
    esps += esps_ext[:n]
    if with_fields:
        fields += fields_ext[:n]
    return redo


# ----------------------------------------------------------------------------- flat pair list (large configs)


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


def _pairs_of_selected(starts, sizes, max_pairs):
    """Pair chunks of the selected (large) configs only, in global atom indices."""
    if sizes.size == 0:
        return
    sub_ptr = np.concatenate([[0], np.cumsum(sizes)])
    offset = np.repeat(starts - sub_ptr[:-1], sizes)
    for recv, src in _intra_config_pair_chunks(sub_ptr, max_pairs):
        yield offset[recv] + recv, offset[src] + src


def _pair_list(pos, q, p, t, starts, sizes, beta, nmax, with_fields, max_pairs, esps, fields):
    """Configs given by (starts, sizes): flat chunked pair list, scatter-added to the receivers."""
    dev = pos.device
    for recv_np, src_np in _pairs_of_selected(starts, sizes, max_pairs):
        recv = torch.as_tensor(recv_np, device=dev)
        src = torch.as_tensor(src_np, device=dev)
        rvec = pos[recv] - pos[src]
        r = torch.linalg.vector_norm(rvec, dim=1)
        r = torch.where(r < MIN_SEPARATION, math.nan, r)  # a coincident pair: non-finite, explained by the caller
        g = g_coulomb(r, nmax) if beta is None else g_erf(r, beta, nmax)
        v, e = pair_potential_field(
            rvec, g, q[src], None if p is None else p[src], None if t is None else t[src], with_fields
        )
        accumulate(recv, v, e, pos.shape[0], esps, fields)


def torch_engine(pos, q, p, t, ptr_np, beta, with_fields, max_pairs):
    """Potential and field (or None) in units of k_e, tensors on the positions' device: padded dense buckets
    for small configs, the chunked pair list for the rest. pos/q/p/t float64 tensors (p Cartesian), ptr_np
    numpy int64, beta = 1/(√2σ) or None for point multipoles."""
    nmax = nmax_needed(p is not None, t is not None, with_fields)
    esps = torch.zeros(pos.shape[0], dtype=torch.float64, device=pos.device)
    fields = torch.zeros((pos.shape[0], 3), dtype=torch.float64, device=pos.device) if with_fields else None
    counts = np.diff(ptr_np)
    redo = _dense_padded(pos, q, p, t, ptr_np, counts, beta, nmax, with_fields, esps, fields)
    large = counts > max(_DENSE_MAX_ATOMS, 1)
    large[redo] = True
    _pair_list(pos, q, p, t, ptr_np[:-1][large], counts[large], beta, nmax, with_fields, max_pairs, esps, fields)
    return esps, fields
