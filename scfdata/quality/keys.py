"""Per-config hashes and duplicate keys (arrays in, arrays out): the composition hash (species in order,
atom count, pbc, charge state), the content hash (exact bits of the positions and periodic cell), and the
exact- and near-duplicate keys with the key offsets the candidate search looks at.

Keys: f = (1/n) Σ_i a_i·r_i with fixed pseudo-random unit vectors a_i per atom index changes by at most
the largest atom displacement between two configs, so two configs within a tolerance t have f within t;
f rounded to cells of size >= t puts a pair into the same or a neighbouring cell, and the dataset step
looks in both neighbours (no rounding-boundary miss). The exact key is one such f of the raw positions
(cell 2e-6 Å), the near key three of the centred positions (cells of the tolerance, 27 neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .segments import atom_index, segment_sum
from .settings import EXACT_TOLERANCE

_B = np.uint64(1 << 21)  # radix of the packed 3-d near-duplicate cell index
#: key differences of the neighbouring cells: 27 for the near key (3-d cells), 3 for the exact key
NEAR_OFFSETS = np.array([d0 + (1 << 21) * d1 + (1 << 42) * d2 for d0 in (-1, 0, 1) for d1 in (-1, 0, 1)
                         for d2 in (-1, 0, 1)], dtype=np.int64).astype(np.uint64)
EXACT_OFFSETS = np.array([-1, 0, 1], dtype=np.int64).astype(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _directions(idx: np.ndarray, k: int) -> np.ndarray:
    """Fixed pseudo-random unit vectors (n, 3), one per atom index and feature ``k``."""
    u = _mix(idx.astype(np.uint64) * np.uint64(8) + np.uint64(k))
    v = _mix(u)
    z = (u >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 * 2.0 - 1.0
    phi = (v >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 * 2.0 * np.pi
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _pbc_bits(pbc: np.ndarray) -> np.ndarray:
    return (np.asarray(pbc, dtype=bool).reshape(-1, 3) * np.array([1, 2, 4])).sum(axis=1).astype(np.uint64)


def composition_keys(numbers: np.ndarray, ptr: np.ndarray, pbc: np.ndarray, state: np.ndarray | None = None
                     ) -> np.ndarray:
    """Hash of (species in order, atom count, pbc, state) per config. ``state`` (n, k): per-config values
    that must also agree, NaN where absent (the total charge and external field: the same geometry in
    another charge state or field is another calculation), compared to 1e-6."""
    with np.errstate(over="ignore", invalid="ignore"):
        idx = atom_index(ptr).astype(np.uint64)
        h = _mix(idx * np.uint64(128) + np.asarray(numbers, dtype=np.uint64))
        n = np.diff(ptr).astype(np.uint64)
        out = _mix(segment_sum(h, ptr) + _mix(n) + _mix(_pbc_bits(pbc) + np.uint64(1 << 40)))
        if state is not None:
            st = np.asarray(state, dtype=np.float64)
            st = st[:, None] if st.ndim == 1 else st
            q = np.where(np.isfinite(st), np.round(st * 1e6), -2.0 ** 62).astype(np.int64).astype(np.uint64)
            for j in range(st.shape[1]):
                out = _mix(out + q[:, j])
        return out


def content_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray, cell: np.ndarray,
                 pbc: np.ndarray) -> np.ndarray:
    """Hash of the exact bits of the positions (and of the cell of periodic configs), per config."""
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(positions, dtype=np.float64).view(np.uint64).reshape(-1, 3)
        idx = atom_index(ptr).astype(np.uint64)
        h = _mix(_mix(_mix(bits[:, 0] + idx) + bits[:, 1]) + bits[:, 2])
        cb = np.ascontiguousarray(cell, dtype=np.float64).view(np.uint64).reshape(-1, 9)
        ch = np.zeros(len(comp), dtype=np.uint64)
        for j in range(9):
            ch = _mix(ch + cb[:, j])
        periodic = np.asarray(pbc, dtype=bool).reshape(-1, 3).any(axis=1)
        return _mix(comp + segment_sum(h, ptr) + np.where(periodic, ch, np.uint64(0)))


def _features(positions: np.ndarray, ptr: np.ndarray, ks: Sequence[int], centred: bool) -> np.ndarray:
    """(n_configs, len(ks)): (1/n) Σ_i a_ik·r_i (r_i minus the config's centroid when ``centred``)."""
    pos = np.asarray(positions, dtype=np.float64)
    n = np.maximum(np.diff(ptr), 1).astype(np.float64)
    if centred:
        centre = segment_sum(pos, ptr) / n[:, None]
        pos = pos - np.repeat(centre, np.diff(ptr), axis=0)
    idx = atom_index(ptr)
    out = np.empty((len(n), len(ks)))
    for c, k in enumerate(ks):
        out[:, c] = segment_sum((_directions(idx, k) * pos).sum(axis=1), ptr) / n
    return out


def _cell_index(values: np.ndarray, size: float) -> np.ndarray:
    return np.floor(values / size).astype(np.int64).astype(np.uint64)


def exact_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Composition hash + the cell (size 2e-6 Å) of one raw-position feature; a pair within 1e-6 Å per
    atom has keys that differ by at most 1."""
    with np.errstate(over="ignore"):
        return _mix(comp ^ np.uint64(0x5EED)) + _cell_index(_features(positions, ptr, [0], False)[:, 0],
                                                             2 * EXACT_TOLERANCE)


def near_keys(comp: np.ndarray, positions: np.ndarray, ptr: np.ndarray, tolerance: float) -> np.ndarray:
    """Composition hash + the packed 3-d cell (size ``tolerance``) of three centred-position features."""
    size = tolerance * (1 + 1e-6) + 1e-12
    c = _cell_index(_features(positions, ptr, [1, 2, 3], True), size)
    with np.errstate(over="ignore"):
        return _mix(comp ^ np.uint64(0xC0FFEE)) + c[:, 0] + _B * c[:, 1] + _B * _B * c[:, 2]
