"""Dataset statistics from mergeable per-shard sums (plain float64 sums; no file I/O here).

Per shard, :func:`shard_sums` reduces the (training) configs to sums that add exactly across shards:

- E0 least squares: with X the per-config element counts and y the energies, XᵀX, Xᵀy, plus the
  per-atom-weighted sums Σ X/N, Σ y/N, Σ XᵀX/N², Σ Xy/N², Σ y²/N² and the count; after solving
  XᵀX e = Xᵀy (minimum-norm solution when the system is under-determined), the mean and std of the
  per-atom residual energies (y − X·e)/N follow from those sums without a second pass. Only elements
  that occur in a config with an energy are fitted; the others get E0 = None (listed in
  ``e0.elements_without_energy``) and do not count towards the rank.
- count, mean and M2 (Chan/Welford merge) of every other target over its present entries (forces per
  component, ESPs also per element, charges, dipoles per masked component, ...).

:func:`merge` adds shard sums; :func:`finalize` turns them into the strict-JSON summary (None where
a quantity has no data, never NaN). Not supported: weighted statistics (config weights are ignored),
robust (median) scales.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

#: Targets whose rms is reported in `scales` (besides energy and forces).
SCALE_TARGETS = ("esps", "fields", "charges", "dipole", "dipole_from_multipoles", "atomic_multipoles",
                 "molecular_forces", "cluster_virial", "total_charge", "fermi_level", "polarizability",
                 "stress", "virials")


class UnderdeterminedWarning(UserWarning):
    """The E0 least-squares system has rank < number of elements."""


def _moments(values: np.ndarray) -> dict:
    """Count, mean and M2 = Σ(x − mean)² (merged with Chan's formula: no cancellation)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"n": 0, "mean": 0.0, "m2": 0.0}
    mean = float(v.mean())
    return {"n": int(v.size), "mean": mean, "m2": float(((v - mean) ** 2).sum())}


def _element_counts(numbers: np.ndarray, atom_ptr: np.ndarray, elements: np.ndarray) -> np.ndarray:
    n_cfg = len(atom_ptr) - 1
    idx = np.searchsorted(elements, numbers)
    x = np.zeros((n_cfg, len(elements)), dtype=np.float64)
    np.add.at(x, (np.repeat(np.arange(n_cfg), np.diff(atom_ptr)), idx), 1.0)
    return x


def shard_sums(
    numbers: np.ndarray,
    atom_ptr: np.ndarray,
    *,
    energy: tuple[np.ndarray, np.ndarray] | None = None,
    atom_targets: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    entry_targets: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """Mergeable sums of one shard.

    numbers, atom_ptr: the configs' atoms (already restricted to the configs to count).
    energy: (values (n_configs,), mask (n_configs,)).
    atom_targets: name -> (per-atom values (n_atoms, ...), per-atom mask (n_atoms,)); also summed per element.
    entry_targets: name -> (values, boolean mask broadcastable to values); config- or molecule-level.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    atom_ptr = np.asarray(atom_ptr, dtype=np.int64)
    elements = np.unique(numbers)
    n_at = np.diff(atom_ptr).astype(np.float64)
    out: dict = {"n_configs": len(atom_ptr) - 1, "n_atoms": int(len(numbers)),
                 "elements": elements.tolist(), "targets": {}, "per_element": {}}
    if energy is not None:
        y, m = np.asarray(energy[0], dtype=np.float64), np.asarray(energy[1], dtype=bool)
        x = _element_counts(numbers, atom_ptr, elements)[m]
        y, n = y[m], n_at[m]
        inv = 1.0 / np.maximum(n, 1.0)
        out["energy"] = {
            "n": int(m.sum()),
            "XtX": (x.T @ x).tolist(), "Xty": (x.T @ y).tolist(),
            "X1": (x * inv[:, None]).sum(axis=0).tolist(), "y1": float((y * inv).sum()),
            "XtX2": ((x * (inv**2)[:, None]).T @ x).tolist(), "Xty2": (x.T @ (y * inv**2)).tolist(),
            "yy2": float((y * y * inv**2).sum()),
        }
    for name, (values, mask) in (atom_targets or {}).items():
        v = np.asarray(values, dtype=np.float64)
        m = np.asarray(mask, dtype=bool)
        out["targets"][name] = _moments(v[m])
        per = {}
        for z in elements:
            sel = m & (numbers == z)
            if sel.any():
                per[str(int(z))] = _moments(v[sel])
        out["per_element"][name] = per
    for name, (values, mask) in (entry_targets or {}).items():
        v = np.asarray(values, dtype=np.float64)
        m = np.broadcast_to(np.asarray(mask, dtype=bool).reshape(np.asarray(mask).shape
                                                                  + (1,) * (v.ndim - np.ndim(mask))), v.shape)
        out["targets"][name] = _moments(v[m])
    return out


def _expand(mat, src: list[int], dst: list[int]) -> np.ndarray:
    """Re-index a vector or matrix over elements ``src`` onto elements ``dst`` (a superset)."""
    a = np.asarray(mat, dtype=np.float64)
    pos = np.searchsorted(dst, src)
    if a.ndim == 1:
        out = np.zeros(len(dst))
        out[pos] = a
    else:
        out = np.zeros((len(dst), len(dst)))
        out[np.ix_(pos, pos)] = a
    return out


def _add_moments(a: dict | None, b: dict) -> dict:
    if a is None or a["n"] == 0:
        return dict(b)
    if b["n"] == 0:
        return dict(a)
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {"n": n, "mean": a["mean"] + delta * b["n"] / n,
            "m2": a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n}


def merge(parts: Sequence[dict]) -> dict:
    """Sum shard sums (exact up to float64 rounding, independent of how configs were sharded)."""
    elements = sorted({z for p in parts for z in p["elements"]})
    out: dict = {"n_configs": 0, "n_atoms": 0, "elements": elements, "targets": {}, "per_element": {}}
    energy = None
    for p in parts:
        out["n_configs"] += p["n_configs"]
        out["n_atoms"] += p["n_atoms"]
        if "energy" in p:
            e = p["energy"]
            src = p["elements"]
            add = {"n": e["n"], "y1": e["y1"], "yy2": e["yy2"]}
            for k in ("XtX", "Xty", "X1", "XtX2", "Xty2"):
                add[k] = _expand(e[k], src, elements) if src else np.zeros((len(elements),) * np.ndim(e[k]))
            if energy is None:
                energy = add
            else:
                energy = {k: energy[k] + add[k] for k in energy}
        for name, mom in p["targets"].items():
            out["targets"][name] = _add_moments(out["targets"].get(name), mom)
        for name, per in p["per_element"].items():
            dst = out["per_element"].setdefault(name, {})
            for z, mom in per.items():
                dst[z] = _add_moments(dst.get(z), mom)
    if energy is not None:
        out["energy"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in energy.items()}
    return out


def _summary(mom: dict | None) -> dict:
    if not mom or mom["n"] == 0:
        return {"n": 0, "mean": None, "std": None, "rms": None}
    n, mean = mom["n"], mom["mean"]
    var = max(mom["m2"] / n, 0.0)
    return {"n": n, "mean": mean, "std": math.sqrt(var), "rms": math.sqrt(mean * mean + var)}


def solve_e0(xtx: np.ndarray, xty: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum-norm least-squares E0 from the normal equations, and the rank of the system."""
    xtx = np.asarray(xtx, dtype=np.float64)
    if xtx.size == 0:
        return np.zeros(0), 0
    rank = int(np.linalg.matrix_rank(xtx))
    e0, *_ = np.linalg.lstsq(xtx, np.asarray(xty, dtype=np.float64), rcond=None)
    return e0, rank


def finalize(merged: dict) -> dict:
    """The strict-JSON statistics (per-element E0, per-atom energy after E0, force and target scales)."""
    elements = merged["elements"]
    symbols = [chemical_symbols[z] for z in elements]
    out: dict = {"n_configs": merged["n_configs"], "n_atoms": merged["n_atoms"], "elements": symbols}
    e = merged.get("energy")
    if e and e["n"] > 0:
        # only elements that occur in a config with an energy enter the fit (their XᵀX diagonal is > 0);
        # the others have no E0 (None), and their all-zero rows must not lower the rank
        xtx, xty = np.asarray(e["XtX"], dtype=np.float64), np.asarray(e["Xty"], dtype=np.float64)
        fit = np.diag(xtx) > 0
        fit_symbols = [s for s, f in zip(symbols, fit, strict=True) if f]
        e0_fit, rank = solve_e0(xtx[np.ix_(fit, fit)], xty[fit])
        e0 = np.zeros(len(elements))
        e0[fit] = e0_fit
        under = rank < len(fit_symbols)
        if under:
            warnings.warn(
                f"E0 least squares is under-determined: rank {rank} < {len(fit_symbols)} elements "
                f"({', '.join(fit_symbols)}); every config has the same element ratios. The minimum-norm "
                "solution is reported; use isolated-atom energies for E0 if you have them",
                UnderdeterminedWarning, stacklevel=2,
            )
        x1, xtx2, xty2 = np.asarray(e["X1"]), np.asarray(e["XtX2"]), np.asarray(e["Xty2"])
        n = e["n"]
        s1 = e["y1"] - float(x1 @ e0)
        s2 = e["yy2"] - 2.0 * float(e0 @ xty2) + float(e0 @ xtx2 @ e0)
        mean = s1 / n
        per_atom = _summary({"n": n, "mean": mean, "m2": max(s2 - n * mean * mean, 0.0)})
        out["atomic_energies"] = {s: (float(v) if f else None) for s, v, f in zip(symbols, e0, fit, strict=True)}
        out["e0"] = {"method": "least_squares", "n_configs": n, "rank": rank, "n_elements": len(fit_symbols),
                     "underdetermined": under,
                     "elements_without_energy": [s for s, f in zip(symbols, fit, strict=True) if not f]}
        out["energy_per_atom"] = per_atom
    else:
        out["atomic_energies"] = None
        out["e0"] = {"method": "least_squares", "n_configs": 0, "rank": 0, "n_elements": len(elements),
                     "underdetermined": True, "elements_without_energy": symbols}
        out["energy_per_atom"] = _summary(None)
    targets = {name: _summary(mom) for name, mom in sorted(merged["targets"].items())}
    for name, per in merged["per_element"].items():
        if name in targets:
            targets[name]["per_element"] = {chemical_symbols[int(z)]: _summary(m) for z, m in sorted(
                per.items(), key=lambda kv: int(kv[0]))}
    out["forces"] = targets.pop("forces", _summary(None))
    out["targets"] = targets
    scales = {"energy_per_atom_std": out["energy_per_atom"]["std"], "forces_rms": out["forces"]["rms"]}
    for name in SCALE_TARGETS:
        if name in targets:
            scales[f"{name}_rms"] = targets[name]["rms"]
    out["scales"] = scales
    return out
