"""Dataset statistics from mergeable per-shard sums (plain float64 sums; no file I/O here).

Per shard, :func:`shard_sums` reduces the (training) configs to sums that add exactly across shards:

- E0 least squares: with X the per-config element counts and y the energies, the R factor of the QR
  decomposition of [X | y] (shards merge by stacking their R factors and factorising again, so the fit,
  its rank, its condition number and the residual come from an orthogonal factorisation, never from
  the squared normal equations), the same for [X/N | y/N], the sums Σ X/N, Σ y/N and the count (from
  which the mean and std of the per-atom residual energies (y − X·e)/N follow without a second pass),
  and per element the configs and atoms that carry an energy (XᵀX and Xᵀy are kept too). Only elements
  that occur in a config with an energy are fitted; the others get E0 = None
  (listed in ``e0.elements_without_energy``) and do not count towards the rank. Supplied E0s
  (isolated-atom energies, ``finalize(..., e0={"H": -13.6})``) take precedence: the other elements are
  fitted to the energies minus the supplied part. The minimum-norm solution is reported when the
  compositions do not determine every E0 (e.g. water clusters only: H and O always 2:1); the elements
  whose E0 the data leave open are named in ``e0.undetermined_elements`` and in a warning.
- count, mean and M2 (Chan/Welford merge) of every other target over its present entries (forces per
  component, ESPs also per element, charges, dipoles per masked component, ...).
- with the split labels, per element and per config_type the configs of each split (:func:`split_counts`).

:func:`merge` adds shard sums; :func:`finalize` turns them into the strict-JSON summary (None where
a quantity has no data, never NaN or infinity). Not supported: weighted statistics (config weights are
ignored), robust (median) scales.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

from .split import SPLIT_NAMES

#: Targets whose rms is reported in `scales` (besides energy and forces).
SCALE_TARGETS = ("esps", "fields", "charges", "dipole", "dipole_from_multipoles", "atomic_multipoles",
                 "molecular_forces", "cluster_virial", "total_charge", "fermi_level", "polarizability",
                 "stress", "virials")


class UnderdeterminedWarning(UserWarning):
    """The E0 least-squares system has rank < number of elements."""


#: How to supply isolated-atom energies (in the warnings).
E0_HINT = ("supply isolated-atom energies (eV), which take precedence: `scfdata statistics --e0 "
           "'{\"H\": -13.6, ...}'`; in the workflow config `statistics: {e0: {H: -13.6, ...}}` or "
           "`statistics: {e0: path/e0.json}` (global, or `datasets.<ds>.statistics.e0` for one dataset)")


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
            "R": _r_factor(np.column_stack([x, y])).tolist(),
            "R_per_atom": _r_factor(np.column_stack([x, y]) * inv[:, None]).tolist(),
            "n_configs_per_element": (x > 0).sum(axis=0).tolist(), "n_atoms_per_element": x.sum(axis=0).tolist(),
            "XtX": (x.T @ x).tolist(), "Xty": (x.T @ y).tolist(),
            "X1": (x * inv[:, None]).sum(axis=0).tolist(), "y1": float((y * inv).sum()),
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


#: Sums that are R factors of a QR decomposition (merged by stacking and factorising again).
R_FACTORS = ("R", "R_per_atom")


def _r_factor(a: np.ndarray) -> np.ndarray:
    """The (k, k) upper-triangular R of A = QR (zero rows appended when A has fewer than k rows)."""
    k = a.shape[1]
    r = np.linalg.qr(a, mode="r") if len(a) else np.zeros((0, k))
    return np.vstack([r, np.zeros((k - len(r), k))]) if len(r) < k else r


def split_counts(numbers: np.ndarray, atom_ptr: np.ndarray, config_type: np.ndarray, labels: np.ndarray) -> dict:
    """Mergeable per-split config counts of one shard: per element (configs that hold it) and per
    config_type, as [train, valid, test] lists (labels 0, 1, 2)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    elements = np.unique(numbers)
    held = _element_counts(numbers, np.asarray(atom_ptr, dtype=np.int64), elements) > 0
    types, t_idx = np.unique(np.asarray(config_type, dtype=str), return_inverse=True)
    per_type = np.zeros((len(types), 3), dtype=np.int64)
    np.add.at(per_type, (t_idx.reshape(-1), labels), 1)
    per_el = np.stack([held[labels == k].sum(axis=0) for k in range(3)], axis=1)
    return {"configs": np.bincount(labels, minlength=3).tolist(),
            "per_element": {str(int(z)): per_el[j].tolist() for j, z in enumerate(elements)},
            "per_config_type": {str(t): per_type[j].tolist() for j, t in enumerate(types)}}


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
            add = {"n": e["n"], "y1": e["y1"]}
            for k in ("XtX", "Xty", "X1", "n_configs_per_element", "n_atoms_per_element"):
                if k in e:
                    add[k] = _expand(e[k], src, elements) if src else np.zeros((len(elements),) * np.ndim(e[k]))
            cols = np.append(np.searchsorted(elements, src), len(elements)).astype(np.int64)  # y stays last
            for k in R_FACTORS:
                if k in e:
                    add[k] = np.zeros((len(elements) + 1, len(elements) + 1))
                    add[k][: len(cols), cols] = np.asarray(e[k], dtype=np.float64).reshape(len(cols), len(cols))
            if energy is None:
                energy = add
            else:
                energy = {k: (_r_factor(np.vstack([energy[k], add[k]])) if k in R_FACTORS else energy[k] + add[k])
                          for k in energy if k in add}
        for name, mom in p["targets"].items():
            out["targets"][name] = _add_moments(out["targets"].get(name), mom)
        for name, per in p["per_element"].items():
            dst = out["per_element"].setdefault(name, {})
            for z, mom in per.items():
                dst[z] = _add_moments(dst.get(z), mom)
    if energy is not None:
        out["energy"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in energy.items()}
    counted = [p["split_counts"] for p in parts if "split_counts" in p]
    if counted:
        merged_counts: dict = {"configs": [0, 0, 0], "per_element": {}, "per_config_type": {}}
        for c in counted:
            merged_counts["configs"] = [a + b for a, b in zip(merged_counts["configs"], c["configs"], strict=True)]
            for key in ("per_element", "per_config_type"):
                for name, n in c[key].items():
                    old = merged_counts[key].get(name, [0, 0, 0])
                    merged_counts[key][name] = [a + b for a, b in zip(old, n, strict=True)]
        out["split_counts"] = merged_counts
    return out


def _summary(mom: dict | None) -> dict:
    if not mom or mom["n"] == 0:
        return {"n": 0, "mean": None, "std": None, "rms": None}
    n, mean = mom["n"], mom["mean"]
    var = max(mom["m2"] / n, 0.0)
    return {"n": n, "mean": mean, "std": math.sqrt(var), "rms": math.sqrt(mean * mean + var)}


def parse_e0(supplied: Mapping | None, source: str = "--e0") -> dict[int, float]:
    """Supplied E0s ``{"H": -13.6, "8": -432.1}`` (element symbols or atomic numbers -> eV) as
    {atomic number: float}; anything else is a ValueError naming ``source``, the entry and what to write."""
    out: dict[int, float] = {}
    for key, value in (supplied or {}).items():
        k = str(key).strip()
        z = int(k) if k.isdigit() else (chemical_symbols.index(k) if k in chemical_symbols[1:] else 0)
        if not 0 < z < len(chemical_symbols):
            raise ValueError(f"{source}: {key!r} is not an element; expected symbols such as \"H\" or atomic "
                             "numbers, e.g. '{\"H\": -13.6, \"O\": -432.1}'")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{source}: E0 of {k} must be a finite number in eV, found {value!r}")
        out[z] = float(value)
    return out


def _fit_e0(e: dict, elements: list[int], supplied: dict[int, float]) -> tuple[np.ndarray, dict]:
    """E0 per element (supplied ones fixed, the others least squares, minimum norm) and the diagnostics."""
    if any(k not in e for k in R_FACTORS):
        raise ValueError("statistics sums without the E0 R factor (written by an older scfdata): rerun "
                         "`scfdata statistics-shard` (in the workflow: `snakemake --forcerun statistics_shard`)")
    symbols = [chemical_symbols[z] for z in elements]
    k, n = len(elements), e["n"]
    r_full = np.asarray(e["R"], dtype=np.float64).reshape(k + 1, k + 1)
    fit = np.abs(r_full[:, :k]).sum(axis=0) > 0  # elements in a config with an energy
    sup = np.array([z in supplied for z in elements], dtype=bool)
    free = fit & ~sup
    e0 = np.array([supplied.get(z, 0.0) for z in elements])
    a = r_full[:, :k][:, free]
    rhs = r_full[:, k] - r_full[:, :k] @ e0  # energies minus the supplied part (e0 is 0 elsewhere)
    n_free = int(free.sum())
    sv = np.zeros(0)
    rank, undetermined = 0, []
    if n_free:
        u, sv, vt = np.linalg.svd(a, full_matrices=True)
        rank = int((sv > sv.max() * max(n, n_free) * np.finfo(float).eps).sum()) if sv.max() > 0 else 0
        e0[free] = vt[:rank].T @ ((u[:, :rank].T @ rhs) / sv[:rank])
        null = np.abs(vt[rank:]).max(axis=0) if rank < n_free else np.zeros(n_free)
        undetermined = [sym for sym, v in zip(np.asarray(symbols)[free], null, strict=True) if v > 1e-8]
    resid = r_full @ np.append(np.where(fit | sup, e0, 0.0), -1.0)
    n_cfg = e.get("n_configs_per_element")
    n_at = e.get("n_atoms_per_element")
    info = {
        "method": "least_squares" if not sup[fit].any() else ("supplied" if not n_free else "least_squares+supplied"),
        "n_configs": n, "rank": rank, "n_elements": n_free, "underdetermined": rank < n_free,
        "elements_without_energy": [sym for sym, f in zip(symbols, fit, strict=True) if not f],
        "condition_number": float(sv[0] / sv[-1]) if n_free and rank == n_free else None,
        "singular_values": [float(v) for v in sv],
        "undetermined_elements": undetermined,
        "residual_rms": math.sqrt(float(resid @ resid) / n),
        "supplied": {chemical_symbols[z]: v for z, v in sorted(supplied.items())},
        "supplied_not_in_data": [chemical_symbols[z] for z in sorted(supplied) if z not in elements],
        "source": {sym: ("supplied" if sp else "undetermined" if sym in undetermined else "fit" if f else "no_energy")
                   for sym, f, sp in zip(symbols, fit, sup, strict=True)},
        "per_element": {sym: {"n_configs": int(n_cfg[j]) if n_cfg else None,
                              "n_atoms": int(n_at[j]) if n_at else None} for j, sym in enumerate(symbols)},
    }
    if undetermined:
        warnings.warn(
            f"E0 of {', '.join(undetermined)} is not determined by the data: the compositions of the {n} configs "
            f"with an energy are linearly dependent in these elements (E0 least squares under-determined: rank "
            f"{rank} < {n_free} elements; e.g. water clusters only: H and O always 2:1), so energy can move "
            f"between them; the minimum-norm values are reported. To fix them, {E0_HINT}",
            UnderdeterminedWarning, stacklevel=3,
        )
    return np.where(fit | sup, e0, np.nan), info


def finalize(merged: dict, e0: Mapping | None = None) -> dict:
    """The strict-JSON statistics (per-element E0, per-atom energy after E0, force and target scales,
    and the split report when the sums carry split counts). ``e0``: supplied E0s (eV) by element symbol
    or atomic number, which take precedence over the fit (see the module docstring)."""
    supplied = parse_e0(e0)
    elements = merged["elements"]
    symbols = [chemical_symbols[z] for z in elements]
    out: dict = {"n_configs": merged["n_configs"], "n_atoms": merged["n_atoms"], "elements": symbols}
    e = merged.get("energy")
    if e and e["n"] > 0:
        e0_all, info = _fit_e0(e, elements, supplied)
        known = ~np.isnan(e0_all)
        e0v = np.where(known, e0_all, 0.0)
        n = e["n"]
        mean = (e["y1"] - float(np.asarray(e["X1"]) @ e0v)) / n
        r_atom = np.asarray(e["R_per_atom"], dtype=np.float64) @ np.append(e0v, -1.0)  # |r_atom|² = Σ ((y − Xe)/N)²
        per_atom = _summary({"n": n, "mean": mean, "m2": max(float(r_atom @ r_atom) - n * mean * mean, 0.0)})
        out["atomic_energies"] = {sym: (float(v) if ok else None)
                                  for sym, v, ok in zip(symbols, e0v, known, strict=True)}
        info["residual_rms_per_atom"] = per_atom["rms"]
        out["e0"] = info
        out["energy_per_atom"] = per_atom
    else:
        out["atomic_energies"] = ({sym: supplied.get(z) for z, sym in zip(elements, symbols, strict=True)}
                                  if supplied else None)
        out["e0"] = {"method": "supplied" if supplied else "least_squares", "n_configs": 0, "rank": 0,
                     "n_elements": len(elements), "underdetermined": True, "elements_without_energy": symbols,
                     "supplied": {chemical_symbols[z]: v for z, v in sorted(supplied.items())}}
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
    if "split_counts" in merged:
        out["split_report"] = _split_report(merged["split_counts"])
    return out


def _split_report(counts: dict) -> dict:
    """Per element and per config_type the configs of each split; the elements train lacks."""
    def named(c):
        return dict(zip(SPLIT_NAMES, c, strict=True))

    per_el = {chemical_symbols[int(z)]: named(c)
              for z, c in sorted(counts["per_element"].items(), key=lambda kv: int(kv[0]))}
    return {"configs": named(counts["configs"]), "per_element": per_el,
            "per_config_type": {t: named(c) for t, c in sorted(counts["per_config_type"].items())},
            "elements_missing_from_train": {el: [s for s in SPLIT_NAMES[1:] if c[s]] for el, c in per_el.items()
                                            if not c["train"] and (c["valid"] or c["test"])}}
