"""Checks on one input frame, in one place. Each failure is a :class:`FrameError` whose text names the
key, what was expected, what was found and what to do; ingest adds the file and frame index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FrameError(ValueError):
    """One frame cannot be ingested; ``str(e)`` is the reason (without file and frame)."""


@dataclass(frozen=True)
class ValidationOptions:
    """Thresholds of the frame checks (all documented in the README)."""

    charge_tolerance: float = 1e-3  # e: |sum q_i - total_charge| allowed
    renormalise_charges: bool = False  # shift charges uniformly onto total_charge instead of rejecting
    max_volume_per_atom: float | None = None  # Å^3, fully periodic only; None (default): no limit, a warning
    min_distance: float = 0.1  # Å
    min_cell_height: float = 0.5  # Å, shortest distance between lattice planes of a periodic direction

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "validation") -> ValidationOptions:
        """Options from a settings block; unknown names and values of the wrong type are a ValueError."""
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping of options, found {d!r}")
        out = {}
        for name, value in d.items():
            if name not in cls.__dataclass_fields__:
                raise ValueError(f"{where}: unknown option {name!r}; options: {', '.join(cls.__dataclass_fields__)}")
            default = getattr(cls, name)
            if isinstance(default, bool) or name == "renormalise_charges":
                ok = isinstance(value, bool)
            else:
                ok = (value is None and name == "max_volume_per_atom") or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                    and value >= 0)
            if not ok:
                raise ValueError(f"{where}.{name}: expected "
                                 f"{'true or false' if name == 'renormalise_charges' else 'a finite number >= 0'}"
                                 f"{' or null' if name == 'max_volume_per_atom' else ''}, found {value!r}")
            out[name] = value
        return cls(**out)


#: Å^3 per atom above which a fully periodic config is kept with a note (a gas-phase box, a porous framework,
#: a molecule in a periodic cell, or a cluster with the wrong pbc flag).
LOW_DENSITY = 100.0
NOTE_LOW_DENSITY = "low density"


def _numeric(name: str, key: str, value, expected: str) -> np.ndarray:
    """``value`` as float64; booleans, strings and ragged or object values are a FrameError."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged nested sequences
        raise FrameError(f"key {key!r} ({name}): expected {expected}, found {_show(value)}") from None
    if arr.dtype.kind not in "iuf":
        kind = {"b": "booleans (T/F)", "U": "text", "S": "text", "O": "mixed or ragged values",
                "c": "complex numbers"}.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise FrameError(f"key {key!r} ({name}): expected {expected}, found {kind}: {_show(value)}; "
                         "fix the value in the input file or map another key")
    return arr.astype(np.float64)


def _show(value, limit: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def as_config_value(name: str, key: str, value, shape: tuple) -> np.ndarray:
    """A per-config value coerced to ``shape`` (stress-like 3x3 fields accept 6 Voigt or 9 numbers)."""
    arr = _numeric(name, key, value, "numbers")
    size = int(np.prod(shape)) if shape else 1
    if shape == (3, 3) and arr.size == 6:
        from ase.stress import voigt_6_to_full_3x3_stress

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
    arr = _numeric(name, key, value, "a numeric per-atom array")
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


def as_weight(name: str, key: str, value, shape: tuple) -> np.ndarray:
    """A config weight: finite numbers >= 0 (a negative weight would make a loss term negative)."""
    arr = as_config_value(name, key, value, shape)
    if np.any(arr < 0):
        raise FrameError(f"key {key!r} ({name} weight): expected weights >= 0, found {arr.tolist()}; "
                         "use 0 to switch a target off for this config")
    return arr


def check_geometry(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, opts: ValidationOptions) -> list[str]:
    """Finite positions and cell; periodic cells right-handed, non-singular, not thinner than
    ``min_cell_height``; density; no overlaps. Returns notes (kept configs worth a warning)."""
    n = len(positions)
    notes = []
    if not np.all(np.isfinite(positions)):
        raise FrameError("positions: NaN or infinite coordinates")
    if not np.all(np.isfinite(cell)):
        raise FrameError(f"cell: NaN or infinite lattice vectors {cell.tolist()} (pbc={pbc.tolist()}); fix the "
                         "Lattice of the frame (or drop it for a cluster)")
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
        from .reference.molecules import periodic_heights  # (imports scipy: periodic configs only)

        heights = periodic_heights(cell, pbc)
        if heights.min() < opts.min_cell_height:
            raise FrameError(
                f"cell: periodic lattice planes {heights.min():.4g} Å apart (heights "
                f"{np.round(heights[pbc], 4).tolist()} Å for pbc={pbc.tolist()}; minimum `min_cell_height` "
                f"{opts.min_cell_height} Å): wrong cell units or a degenerate cell; fix the Lattice or set pbc to F"
            )
        if pbc.all() and det / n > LOW_DENSITY:
            notes.append(f"{NOTE_LOW_DENSITY}: {det / n:.1f} Å^3 per atom in a fully periodic config (kept; "
                         "a cluster with the wrong pbc flag? `max_volume_per_atom` makes such configs rejects)")
    if n < 2:
        return notes
    d_min, pair = _closest_pair(positions, cell, pbc, opts.min_distance)
    if d_min < opts.min_distance:
        raise FrameError(
            f"positions: atoms {pair[0]} and {pair[1]} are {d_min:.4f} Å apart (minimum {opts.min_distance} Å); "
            "a duplicated atom or wrong units?"
        )
    return notes


def _closest_pair(positions, cell, pbc, cutoff):
    if not pbc.any() and len(positions) <= 256:
        d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        return float(d[i, j]), (int(min(i, j)), int(max(i, j)))
    if not pbc.any():
        from scipy.spatial import cKDTree  # (clusters above 256 atoms only: scipy stays out of start-up)

        pairs = cKDTree(positions).query_pairs(cutoff, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.linalg.norm(positions[j] - positions[i], axis=1)
    else:
        from .reference.molecules import periodic_pairs

        try:
            i, j, _, d = periodic_pairs(positions, cell, pbc, cutoff)
        except ValueError as e:
            raise FrameError(f"cell: {str(e).split(': ', 1)[1]}") from None
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
