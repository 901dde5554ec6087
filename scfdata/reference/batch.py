"""Index and validation helpers for concatenated configs (an atom pointer ``ptr``: config c owns atoms
ptr[c]..ptr[c+1]-1); errors name configs by ``config_index[c]`` (the caller's numbering, default c) and
count atoms within their config."""

from __future__ import annotations

import numpy as np


def atoms_of(ptr: np.ndarray, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of the given configs (concatenated, vectorised) and their sub-pointer."""
    counts = np.diff(ptr)[configs]
    sub_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(ptr[:-1][configs] - sub_ptr[:-1], counts) + np.arange(sub_ptr[-1])
    return idx, sub_ptr


def locate(ptr, atom: int, config_index=None) -> tuple[int, int]:
    """(config label, atom index within that config) of flat atom index ``atom``."""
    c = int(np.searchsorted(ptr, atom, side="right")) - 1
    return (c if config_index is None else int(config_index[c])), atom - int(ptr[c])


def raise_if_not_finite(ptr, config_index=None, **arrays) -> None:
    """ValueError naming the config, the array and the atom of the first non-finite entry among ``arrays``
    (numpy, None skipped)."""
    for name, arr in arrays.items():
        if arr is None:
            continue
        bad = ~np.isfinite(np.asarray(arr).reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            label, k = locate(ptr, int(np.flatnonzero(bad)[0]), config_index)
            raise ValueError(f"config {label}: {name} of atom {k} are not finite; fix or drop the config")


def raise_if_not_traceless(quadrupoles, ptr, config_index=None, rtol: float = 1e-8) -> None:
    """ValueError unless every (3, 3) quadrupole is symmetric and traceless to ``rtol`` of its largest entry
    (numpy or torch, on any device). A raw second moment Σ q r r passed for Θ would otherwise be read with
    its trace dropped and, by some engines, only one triangle of it."""
    t = quadrupoles
    if t is None or len(t) == 0:
        return
    if hasattr(t, "detach"):  # torch: reduce on the tensor's device, move one row of numbers
        asym = (t - t.transpose(1, 2)).abs().flatten(1).amax(1)
        trace = (t[:, 0, 0] + t[:, 1, 1] + t[:, 2, 2]).abs()
        bad = (asym.maximum(trace) > rtol * t.abs().flatten(1).amax(1)).cpu().numpy()
    else:
        asym = np.abs(t - t.transpose(0, 2, 1)).reshape(len(t), -1).max(1)
        trace = np.abs(np.trace(t, axis1=1, axis2=2))
        bad = np.maximum(asym, trace) > rtol * np.abs(t).reshape(len(t), -1).max(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        label, k = locate(ptr, i, config_index)
        row = np.asarray(t[i].detach().cpu() if hasattr(t, "detach") else t[i])
        raise ValueError(
            f"config {label}: the quadrupole of atom {k} must be symmetric and traceless (Θ = ½ Σ q (3 r r − r² I)), "
            f"got trace {np.trace(row):.3g} and asymmetry {np.abs(row - row.T).max():.3g} e·Å²; convert a raw "
            "second moment M with Θ = (3 M − tr(M) I) / 2"
        )


def raise_if_bad_cells(cells, config_index=None) -> None:
    """ValueError naming the config (when ``config_index`` is given) of the first cell (rows are vectors)
    with a non-finite entry or without volume (below 1e-9 of its largest entry cubed)."""
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    if cells.shape[0] == 0:
        return
    finite = np.isfinite(cells).all(axis=(1, 2))
    volume = np.abs(np.linalg.det(np.where(finite[:, None, None], cells, 0.0)))
    bad = ~finite | ~(volume > 1e-9 * np.maximum(1.0, np.abs(cells).max(axis=(1, 2)) ** 3))
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        where = "" if config_index is None else f"config {int(config_index[c])}: "
        what = "a cell with non-zero volume" if finite[c] else "a cell of finite vectors with non-zero volume"
        raise ValueError(f"{where}periodic evaluation needs {what}; got {cells[c].tolist()}")
