"""Checks on one input frame, in one place. Each failure is a :class:`FrameError` whose text names the
key, what was expected, what was found and what to do; ingest adds the file and frame index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress


class FrameError(ValueError):
    """One frame cannot be ingested; ``str(e)`` is the reason (without file and frame)."""


@dataclass(frozen=True)
class ValidationOptions:
    """Thresholds of the frame checks (all documented in the README)."""

    charge_tolerance: float = 1e-3  # e: |sum q_i - total_charge| allowed
    renormalise_charges: bool = False  # shift charges uniformly onto total_charge instead of rejecting
    max_volume_per_atom: float | None = 100.0  # Å^3, fully periodic only; None switches the check off
    min_distance: float = 0.1  # Å


def as_config_value(name: str, key: str, value, shape: tuple) -> np.ndarray:
    """A per-config value coerced to ``shape`` (stress-like 3x3 fields accept 6 Voigt or 9 numbers)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FrameError(f"key {key!r} ({name}): expected numbers, found {value!r}") from None
    size = int(np.prod(shape)) if shape else 1
    if shape == (3, 3) and arr.size == 6:
        arr = voigt_6_to_full_3x3_stress(arr.reshape(6))
    elif arr.size != size:
        expect = "6 (Voigt) or 9 numbers" if shape == (3, 3) else f"{size} number{'s' * (size > 1)}"
        raise FrameError(f"key {key!r} ({name}): expected {expect}, found {arr.size} ({arr.shape})")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise FrameError(f"key {key!r} ({name}): contains NaN or infinite values: {arr.tolist()}")
    return arr


def as_atom_value(name: str, key: str, value, n_atoms: int, shape: tuple) -> np.ndarray:
    """A per-atom array coerced to (n_atoms, *shape); ``shape == (None,)`` is the multipole columns."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FrameError(f"key {key!r} ({name}): expected a numeric per-atom array") from None
    if shape == ():
        if arr.shape == (n_atoms, 1):
            arr = arr[:, 0]
        ok = arr.shape == (n_atoms,)
        expect = f"({n_atoms},)"
    elif shape == (None,):
        if arr.ndim == 1:
            arr = arr[:, None]
        k = arr.shape[1] if arr.ndim == 2 else 0
        ok = arr.ndim == 2 and arr.shape[0] == n_atoms and k > 0 and int(round(np.sqrt(k))) ** 2 == k
        expect = f"({n_atoms}, (L+1)^2) with a square column count (1, 4, 9, ...)"
    else:
        ok = arr.shape == (n_atoms, *shape)
        expect = f"({n_atoms}, {', '.join(map(str, shape))})"
    if not ok:
        raise FrameError(f"key {key!r} ({name}): expected shape {expect}, found {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr.reshape(n_atoms, -1)))[0, 0]
        raise FrameError(f"key {key!r} ({name}): NaN or infinite value (first at atom {bad})")
    return arr


def check_geometry(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, opts: ValidationOptions) -> None:
    """Finite positions; periodic cells right-handed and non-singular; plausible density; no overlaps."""
    n = len(positions)
    if not np.all(np.isfinite(positions)):
        raise FrameError("positions: NaN or infinite coordinates")
    if pbc.any():
        det = float(np.linalg.det(cell))
        if abs(det) < 1e-8:
            raise FrameError(f"cell: singular (determinant {det:.3g}) for a periodic config (pbc={pbc.tolist()}); "
                             "give the cell vectors or set pbc to F F F")
        if det < 0:
            raise FrameError(f"cell: left-handed (determinant {det:.6g} < 0); swap two cell vectors to make it "
                             "right-handed")
        if pbc.all() and opts.max_volume_per_atom is not None and det / max(n, 1) > opts.max_volume_per_atom:
            raise FrameError(
                f"cell: {det / n:.1f} Å^3 per atom in a fully periodic config (limit {opts.max_volume_per_atom}): "
                "almost always a cluster with the wrong pbc flag; set pbc=F F F, or raise "
                "`max_volume_per_atom` (null switches the check off)"
            )
    if n < 2:
        return
    d_min, pair = _closest_pair(positions, cell, pbc, opts.min_distance)
    if d_min < opts.min_distance:
        raise FrameError(
            f"positions: atoms {pair[0]} and {pair[1]} are {d_min:.4f} Å apart (minimum {opts.min_distance} Å); "
            "a duplicated atom or wrong units?"
        )


def _closest_pair(positions, cell, pbc, cutoff):
    if not pbc.any() and len(positions) <= 256:
        d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        return float(d[i, j]), (int(min(i, j)), int(max(i, j)))
    from ase.neighborlist import primitive_neighbor_list

    i, j, d = primitive_neighbor_list("ijd", pbc, cell, positions, cutoff, self_interaction=False)
    if len(d) == 0:
        return np.inf, (0, 0)
    k = int(np.argmin(d))
    return float(d[k]), (int(i[k]), int(j[k]))


def check_total_charge(charges: np.ndarray, total_charge: float, opts: ValidationOptions) -> np.ndarray:
    """Charges that sum to ``total_charge``: returned unchanged, shifted (renormalise) or rejected."""
    s = float(charges.sum())
    if abs(s - total_charge) <= opts.charge_tolerance:
        return charges
    if opts.renormalise_charges:
        return charges + (total_charge - s) / len(charges)
    raise FrameError(
        f"charges (l=0 multipoles) sum to {s:.6f} e but total_charge is {total_charge:.6f} e "
        f"(tolerance {opts.charge_tolerance} e); check the key mapping, or set `renormalise_charges: true`"
    )
