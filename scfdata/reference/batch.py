"""Index helpers for concatenated configs (an atom pointer ``ptr``: config c owns atoms ptr[c]..ptr[c+1]-1)."""

from __future__ import annotations

import numpy as np


def atoms_of(ptr: np.ndarray, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of the given configs (concatenated, vectorised) and their sub-pointer."""
    counts = np.diff(ptr)[configs]
    sub_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(ptr[:-1][configs] - sub_ptr[:-1], counts) + np.arange(sub_ptr[-1])
    return idx, sub_ptr


def raise_if_not_finite(ptr, config_index=None, **arrays) -> None:
    """ValueError naming the config (``config_index[c]``, default c), the array and the atom (counted within
    its config) of the first non-finite entry among ``arrays`` (numpy, None skipped)."""
    for name, arr in arrays.items():
        if arr is None:
            continue
        bad = ~np.isfinite(np.asarray(arr).reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            c = int(np.searchsorted(ptr, k, side="right")) - 1
            label = c if config_index is None else int(config_index[c])
            raise ValueError(f"config {label}: {name} of atom {k - int(ptr[c])} are not finite; fix or drop the config")
