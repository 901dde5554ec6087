"""Reductions over the per-config segments ``ptr[c]:ptr[c + 1]`` of ragged atom arrays (vectorised; empty
segments give 0). Helpers of the keys, the sketch and the pair checks of this package."""

from __future__ import annotations

import numpy as np


def segment_sum(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Sums of ``values`` (any dtype; uint64 wraps) over the segments of ``ptr`` (empty segments: 0)."""
    out = np.zeros((len(ptr) - 1,) + values.shape[1:], dtype=values.dtype)
    nonempty = np.diff(ptr) > 0
    if nonempty.any():
        out[nonempty] = np.add.reduceat(values, ptr[:-1][nonempty], axis=0)
    return out


def segment_max(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Largest of ``values`` (n,) over each segment of ``ptr``, as float64 (empty segments: 0)."""
    out = np.zeros(len(ptr) - 1)
    nonempty = np.diff(ptr) > 0
    if nonempty.any():
        out[nonempty] = np.maximum.reduceat(values, ptr[:-1][nonempty])
    return out


def atom_index(ptr: np.ndarray) -> np.ndarray:
    """Index of each atom within its config."""
    counts = np.diff(ptr)
    return np.arange(int(ptr[-1]), dtype=np.int64) - np.repeat(ptr[:-1], counts)
