"""Duplicates of a dataset from its per-config keys: candidate pairs (configs whose keys lie in the same or
a neighbouring cell), the exact check of each pair on the positions, and the resolution into ``duplicate``
and ``near_duplicate`` with each one's first copy.

Configs with bit-identical content are first collapsed by the content hash, so a thousand copies of one
config cost a thousand checks, not a million. Every candidate pair is checked exactly on the positions.
Expected time O(N) for data whose distinct configs are not packed within the tolerance; a periodic config
whose atoms were wrapped into the cell differently is not matched (positions are compared as stored).

A config that matches an earlier config exactly is a ``duplicate`` of that config's first copy (exact
matches chain: they are within 1e-6 Å each). A near duplicate is compared with first copies only (configs
that are neither duplicate nor near duplicate), so a slowly moving trajectory does not chain into one group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..columns import ptr_from_counts, ranges_index
from .keys import EXACT_OFFSETS, NEAR_OFFSETS
from .segments import segment_max, segment_sum
from .settings import EXACT_TOLERANCE

PAIR_ATOMS = 1 << 20  # atoms per side of one batch of candidate pairs checked together (~50 MB)


def find_duplicates(keys: dict, gather, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Duplicate kinds, originals and deviations of the whole dataset from its per-config keys."""
    n = len(keys["content"])
    first = first_of_content(keys["content"])
    uniq = np.flatnonzero(first == np.arange(n))
    searches = [(keys["exact_key"][uniq], EXACT_OFFSETS)]
    if tolerance > 0:
        searches.append((keys["near_key"][uniq], NEAR_OFFSETS))
    pairs, n_candidates = [], 0
    for k, offsets in searches:
        for i, j in candidate_pairs(k, offsets):
            i, j = uniq[i], uniq[j]
            same_n = keys["comp"][i] == keys["comp"][j]  # species, pbc and state (64-bit hash)
            code = np.unique(i[same_n] * n + j[same_n])
            n_candidates += len(code)
            pairs.extend(_check_pairs(code // n, code % n, keys["n_atoms"], gather, tolerance))
    kind, original, deviation = resolve_duplicates(n, first, pairs)
    return kind, original, deviation, {"identical_copies": int(n - len(uniq)), "candidate_pairs": n_candidates}


def _check_pairs(i: np.ndarray, j: np.ndarray, n_atoms: np.ndarray, gather, tolerance: float):
    """Check candidate pairs exactly on the positions, in batches of about PAIR_ATOMS atoms."""
    cum = np.cumsum(n_atoms[i])
    start = 0
    while start < len(i):
        stop = max(int(np.searchsorted(cum, cum[start] - n_atoms[i[start]] + PAIR_ATOMS, "right")), start + 1)
        bi, bj = i[start:stop], j[start:stop]
        ids = np.unique(np.concatenate([bi, bj]))
        data = gather(ids)
        ra, rb = np.searchsorted(ids, bi), np.searchsorted(ids, bj)
        a_idx, b_idx = ranges_index(data["ptr"], ra), ranges_index(data["ptr"], rb)
        same, raw, centred, dcell = pair_deviations(
            data["positions"][a_idx], data["positions"][b_idx], data["numbers"][a_idx], data["numbers"][b_idx],
            ptr_from_counts(np.diff(data["ptr"])[ra]), data["cell"][ra], data["cell"][rb], data["pbc"][ra],
            data["pbc"][rb])
        exact = same & (raw <= EXACT_TOLERANCE) & (dcell <= EXACT_TOLERANCE)
        near = same & (centred <= tolerance) & (dcell <= tolerance)
        match = exact | near  # only matches are kept: a dense cell has many candidates and few matches
        yield bi[match], bj[match], exact[match], near[match], centred[match]
        start = stop


def first_of_content(content: np.ndarray) -> np.ndarray:
    """Per config the lowest position with the same content hash (itself for the first)."""
    _, first, inverse = np.unique(content, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


MAX_PAIRS = 1 << 22  # candidate pairs held at once (a dense cell of similar configs has ~n² of them)


def candidate_pairs(keys: np.ndarray, offsets: np.ndarray, chunk: int = 1 << 16):
    """Pairs (i, j), j < i (positions in ``keys``), whose keys differ by one of ``offsets`` (uint64,
    wrapping); yielded in chunks of at most ``chunk`` query configs and about MAX_PAIRS pairs, so that memory
    stays bounded however dense a cell is.

    The keys are sorted once and grouped into runs of equal keys; the queries go in sorted key order, one
    search per run and offset among the run heads (needles in nearly sorted order: cache friendly), and a
    query config pairs with every member of each matching run.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    offsets = np.asarray(offsets, dtype=np.uint64).reshape(-1)
    if len(keys) == 0 or len(offsets) == 0:
        return
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    head = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    size = np.diff(np.r_[head, len(sk)])
    runs = sk[head]
    run_of = np.repeat(np.arange(len(runs)), size)  # run of each sorted position
    for s in range(0, len(keys), chunk):
        e = min(s + chunk, len(keys))
        r0, r1 = int(run_of[s]), int(run_of[e - 1]) + 1
        hit_run, hit_lo, hit_n = _matching_runs(runs, head, size, r0, r1, offsets)
        hit_ptr = ptr_from_counts(np.bincount(hit_run, minlength=r1 - r0))
        per_run = np.bincount(hit_run, weights=hit_n, minlength=r1 - r0).astype(np.int64)
        cum = np.cumsum(per_run[run_of[s:e] - r0])  # candidates up to each query config of the chunk
        a = 0
        while a < e - s:  # split the chunk so that each piece holds about MAX_PAIRS pairs at most
            before = int(cum[a - 1]) if a else 0
            b = max(int(np.searchsorted(cum, before + MAX_PAIRS, "right")), a + 1)
            q = np.arange(s + a, s + b)
            rq = run_of[q] - r0
            n_hits = hit_ptr[rq + 1] - hit_ptr[rq]
            h = _expand_ranges(hit_ptr[rq], n_hits)  # the matching runs of each query config
            j = order[_expand_ranges(hit_lo[h], hit_n[h])]
            i = np.repeat(np.repeat(order[q], n_hits), hit_n[h])
            keep = j < i
            if keep.any():
                yield i[keep], j[keep]
            a = b


def _matching_runs(runs, head, size, r0: int, r1: int, offsets):
    """The runs whose key is the key of one of the runs ``r0:r1`` plus one of the offsets: (query run - r0,
    sorted position of the matching run, its length) per match, ordered by query run."""
    found = []
    for d in offsets:
        with np.errstate(over="ignore"):
            target = runs[r0:r1] + d
        r = np.minimum(np.searchsorted(runs, target, "left"), len(runs) - 1)
        hit = np.flatnonzero(runs[r] == target)
        found.append((hit, head[r[hit]], size[r[hit]]))
    hit_run, hit_lo, hit_n = (np.concatenate(v) for v in zip(*found))
    by_run = np.argsort(hit_run, kind="stable")
    return hit_run[by_run], hit_lo[by_run], hit_n[by_run]


def _expand_ranges(lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Concatenated ``range(lo[r], lo[r] + n[r])`` without a Python loop."""
    return np.arange(int(n.sum()), dtype=np.int64) + np.repeat(lo - ptr_from_counts(n)[:-1], n)


def pair_deviations(pos_a, pos_b, numbers_a, numbers_b, ptr, cell_a, cell_b, pbc_a, pbc_b):
    """Per pair of configs with the same atom counts (atoms of pair p at ``ptr[p]:ptr[p+1]`` in both
    position arrays): (same species and pbc, largest |Δr|, largest |Δr| after aligning the centroids,
    largest |Δcell| entry (0 for open-boundary pairs))."""
    ptr = np.asarray(ptr, dtype=np.int64)
    n_pair = len(ptr) - 1
    counts = np.diff(ptr)
    d = np.asarray(pos_a, dtype=np.float64) - np.asarray(pos_b, dtype=np.float64)
    same = segment_sum((np.asarray(numbers_a) != np.asarray(numbers_b)).astype(np.int64), ptr) == 0
    pa, pb = np.asarray(pbc_a, bool).reshape(-1, 3), np.asarray(pbc_b, bool).reshape(-1, 3)
    same &= (pa == pb).all(axis=1)
    raw = segment_max(np.linalg.norm(d, axis=1), ptr)
    shift = segment_sum(d, ptr) / np.maximum(counts, 1)[:, None]
    centred = segment_max(np.linalg.norm(d - np.repeat(shift, counts, axis=0), axis=1), ptr)
    dc = np.abs(np.asarray(cell_a, np.float64).reshape(n_pair, 9) - np.asarray(cell_b, np.float64).reshape(n_pair, 9))
    dcell = np.where(pa.any(axis=1), dc.max(axis=1, initial=0.0), 0.0)
    return same, raw, centred, dcell


def resolve_duplicates(n: int, first: np.ndarray, pairs: Sequence[tuple[np.ndarray, ...]]):
    """Flags of duplicates from verified pairs.

    n: configs; first: per config the first config of its bit-identical content (itself if none);
    pairs: (i, j, exact, near, deviation) arrays of checked candidate pairs (j < i; ``exact``: within
    1e-6 Å; ``near``: within the near-duplicate tolerance after aligning the centroids).
    Returns (kind (n,) int8: 0 none, 1 duplicate, 2 near duplicate; original (n,) int64 (-1 for none);
    deviation (n,) float64, the near duplicate's largest centred |Δr|).
    """
    kind = np.zeros(n, dtype=np.int8)
    original = np.full(n, -1, dtype=np.int64)
    deviation = np.zeros(n)
    copies = np.flatnonzero(first != np.arange(n))
    i_all = [copies] + [p[0] for p in pairs]
    j_all = [first[copies]] + [p[1] for p in pairs]
    ex_all = [np.ones(len(copies), bool)] + [p[2] for p in pairs]
    nr_all = [np.ones(len(copies), bool)] + [p[3] for p in pairs]
    dv_all = [np.zeros(len(copies))] + [p[4] for p in pairs]
    i, j = np.concatenate(i_all), np.concatenate(j_all)
    ex, nr, dv = np.concatenate(ex_all), np.concatenate(nr_all), np.concatenate(dv_all)
    keep = ex | nr
    i, j, ex, dv = i[keep], j[keep], ex[keep], dv[keep]
    order = np.lexsort((j, ~ex, i))  # per config: exact matches first, each by position
    i, j, ex, dv = i[order].tolist(), j[order].tolist(), ex[order].tolist(), dv[order].tolist()
    p = 0
    while p < len(i):  # one step per config with a match (sequential: a first copy must be settled first)
        q = p
        while q < len(i) and i[q] == i[p]:
            q += 1
        c = i[p]
        # an exact copy of an exact copy names the first copy; of a near duplicate, that near duplicate itself
        # (its first copy is only within the tolerance: "within 1e-6 Å" of it would be false)
        roots = [int(original[j[r]]) if kind[j[r]] == 1 else j[r] for r in range(p, q) if ex[r]]
        if roots:
            kind[c], original[c] = 1, min(roots)
        else:
            for r in range(p, q):
                if kind[j[r]] == 0:
                    kind[c], original[c], deviation[c] = 2, j[r], dv[r]
                    break
        p = q
    return kind, original, deviation
