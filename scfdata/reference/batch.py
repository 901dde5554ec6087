"""Index helpers for concatenated configs (an atom pointer ``ptr``: config c owns atoms ptr[c]..ptr[c+1]-1)."""

from __future__ import annotations

import numpy as np


def atoms_of(ptr: np.ndarray, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of the given configs (concatenated, vectorised) and their sub-pointer."""
    counts = np.diff(ptr)[configs]
    sub_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(ptr[:-1][configs] - sub_ptr[:-1], counts) + np.arange(sub_ptr[-1])
    return idx, sub_ptr
