"""Candidate pairs of the duplicate search (scfdata.quality.duplicates.candidate_pairs) against a brute force
over all pairs: keys in dense runs, keys that wrap around 2^64, the packed 3-d near-duplicate cells, tiny
chunks and pair budgets (every pair exactly once, each yielded piece within the budget)."""

from __future__ import annotations

import numpy as np
import pytest

from scfdata.quality import duplicates
from scfdata.quality.keys import EXACT_OFFSETS, NEAR_OFFSETS


def _brute_force(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n_pairs, 2) rows (i, j), j < i, keys[i] - keys[j] (mod 2^64) one of the offsets, sorted."""
    n = len(keys)
    with np.errstate(over="ignore"):
        diff = keys[:, None] - keys[None, :]
    i, j = np.nonzero(np.isin(diff, offsets) & (np.arange(n)[None, :] < np.arange(n)[:, None]))
    return np.column_stack([i, j])


def _collect(keys, offsets, chunk) -> tuple[np.ndarray, list[int]]:
    pieces = list(duplicates.candidate_pairs(keys, offsets, chunk))
    rows = np.concatenate([np.column_stack(p) for p in pieces]) if pieces else np.zeros((0, 2), np.int64)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))], [len(p[0]) for p in pieces]


def _keys(kind: str, n: int, rng) -> np.ndarray:
    if kind == "dense":  # few distinct keys: long runs, neighbours at +-1
        return rng.integers(0, 30, n).astype(np.uint64)
    if kind == "wrap":  # keys next to 2^64 - 1 and next to 0: their +-1 neighbours wrap around
        k = np.uint64(2**64 - 1) - rng.integers(0, 4, n).astype(np.uint64)
        k[::3] = rng.integers(0, 4, len(k[::3])).astype(np.uint64)
        return k
    if kind == "cells":  # packed 3-d cells as in near_keys
        c = rng.integers(0, 4, (n, 3)).astype(np.uint64)
        with np.errstate(over="ignore"):
            return np.uint64(2**64 - 7) + c[:, 0] + np.uint64(1 << 21) * c[:, 1] + np.uint64(1 << 42) * c[:, 2]
    k = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)  # distinct, plus one big run
    k[: n // 2] = k[0] if n else 0
    return k


@pytest.mark.parametrize("kind", ["dense", "wrap", "cells", "sparse"])
@pytest.mark.parametrize("offsets", [EXACT_OFFSETS, NEAR_OFFSETS], ids=["exact", "near"])
def test_candidate_pairs_match_brute_force(kind, offsets, monkeypatch):
    rng = np.random.default_rng(len(kind) + len(offsets))
    for trial in range(25):
        n = int(rng.integers(0, 300)) if trial else 0
        keys = _keys(kind, n, rng)
        budget = int(rng.integers(1, 400))
        monkeypatch.setattr(duplicates, "MAX_PAIRS", budget)
        chunk = int(rng.integers(1, 64))
        got, sizes = _collect(keys, offsets, chunk)
        want = _brute_force(keys, offsets)
        assert np.array_equal(got, want), (kind, trial, len(got), len(want))
        # a piece holds more than the budget only when one query config alone has more candidates
        with np.errstate(over="ignore"):
            per_query = np.isin(keys[:, None] - keys[None, :], offsets).sum(axis=0) if n else np.zeros(0)
        assert max(sizes, default=0) <= max(budget, int(per_query.max(initial=0)))


def test_candidate_pairs_of_distinct_far_keys_are_none():
    keys = np.arange(1000, dtype=np.uint64) * np.uint64(10)
    assert list(duplicates.candidate_pairs(keys, EXACT_OFFSETS)) == []
    assert list(duplicates.candidate_pairs(np.zeros(0, np.uint64), NEAR_OFFSETS)) == []
