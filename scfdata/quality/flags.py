"""The dataset step (:func:`flag_dataset`): merges the shards' sketches in shard order into each config's flag
bits, the original of each duplicate, one detail text per flagged config and flag, and the meta (settings,
counts, thresholds, E0)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from ase.data import chemical_symbols

from ..columns import ptr_from_counts
from .duplicates import find_duplicates
from .energy import energy_centre
from .robust import force_scores, histogram_centre, merge_histograms
from .settings import BIT, DIPOLE_FLOOR, EXACT_TOLERANCE, FLAG_NAMES, check_settings


def flag_dataset(n_shards: int, load, gather, settings: Mapping) -> tuple[list[dict], dict]:
    """The flags of a dataset from its shards' sketches.

    load(k): the sketch of shard k (a mapping of arrays, :func:`shard_sketch` plus ``source`` (n, 2) and
    ``inputs`` (input paths)); gather(ids): numbers, positions, ptr, cell, pbc of the configs at the sorted
    global positions ``ids``. Returns per shard {"flags", "original", "rows": [(file, frame, flag, detail)]}
    and the meta (settings, counts, thresholds, e0).
    """
    s = check_settings(settings)
    tol = s["near_duplicate_tolerance"]
    keys = {k: [] for k in ("comp", "content", "exact_key", "near_key", "n_atoms", "source")}
    sizes, inputs, hist = [], None, {}
    for k in range(n_shards):
        sk = load(k)
        sizes.append(len(sk["n_atoms"]))
        for name in keys:
            keys[name].append(np.asarray(sk[name]))
        paths = [str(p) for p in sk["inputs"]]
        if inputs is not None and paths != inputs and sizes[-1]:
            raise ValueError(f"shard {k}: its input files {paths} differ from the other shards' {inputs}: "
                             "the shards are not of one dataset; rerun the dataset's ingest")
        if inputs is None and sizes[-1]:  # an empty shard never names the inputs
            inputs = paths
        merge_histograms(hist, sk["force_hist"])
    keys = {name: np.concatenate(v) if v else np.zeros(0) for name, v in keys.items()}
    offsets = ptr_from_counts(np.array(sizes, dtype=np.int64))
    n = int(offsets[-1])
    kind, original, deviation, dup_info = find_duplicates(keys, gather, tol) if n else (
        np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0), {})
    resid, e_centre, e0_info = energy_centre(load, offsets, s["outlier_sigma"], kind == 0)
    f_centre = {z: histogram_centre(h) for z, h in sorted(hist.items())}

    def where(g) -> tuple[str, int]:
        f, fr = (int(v) for v in keys["source"][g])
        return (inputs[f] if 0 <= f < len(inputs or []) else str(f)), fr

    def name(g) -> str:
        path, frame = where(g)
        return f"{path}:{frame}"

    ctx = {"kind": kind, "original": original, "deviation": deviation, "resid": resid, "energy": e_centre,
           "forces": f_centre, "tol": tol, "name": name}
    shards, counts = [], dict.fromkeys(FLAG_NAMES, 0)
    for k in range(n_shards):
        sk = load(k)
        ctx["g"] = g = np.arange(offsets[k], offsets[k + 1])
        flags = _shard_flags(sk, ctx, s)
        rows = []
        for c in np.flatnonzero(flags):  # one step per flagged config
            for flag in (f for f in FLAG_NAMES if flags[c] & BIT[f]):
                counts[flag] += 1
                rows.append((*where(g[c]), flag, _details(sk, int(c), flag, ctx)))
        shards.append({"flags": flags, "original": np.where(kind[g] > 0, original[g], -1).astype(np.int64),
                       "rows": rows})
    med, sig, n_e = e_centre
    meta = {
        "settings": s, "n_configs": n, "counts": counts,
        "thresholds": {
            "exact_duplicate_tolerance": EXACT_TOLERANCE, "near_duplicate_tolerance": tol,
            "outlier_sigma": s["outlier_sigma"],
            "energy_per_atom": {"median": _num(med), "robust_sigma": _num(sig), "n_configs": n_e},
            "forces": {chemical_symbols[z]: {"median": _num(c[0]), "robust_sigma": _num(c[1]), "n_atoms": c[2]}
                       for z, c in f_centre.items()},
            "dipole_tolerance": s["dipole_tolerance"], "dipole_floor": DIPOLE_FLOOR,
        },
        "e0": e0_info, "duplicates": dup_info,
    }
    return shards, meta


def _shard_flags(sk: Mapping, ctx: dict, s: Mapping) -> np.ndarray:
    """Flag bits of one shard's configs (ctx: the dataset's duplicates, residuals and robust centres; the
    per-shard force scores and dipole limits are added to it for the details)."""
    g, sigma = ctx["g"], s["outlier_sigma"]
    flags = np.zeros(len(g), dtype=np.uint32)
    flags[ctx["kind"][g] == 1] |= BIT["duplicate"]
    flags[ctx["kind"][g] == 2] |= BIT["near_duplicate"]
    med, sig, _ = ctx["energy"]
    if math.isfinite(med):
        flags[np.abs(ctx["resid"][g] - med) > sigma * sig] |= BIT["energy_outlier"]
    ctx["score"], ctx["col"] = force_scores(sk["elements"], sk["force_max"],
                                            {z: c[:2] for z, c in ctx["forces"].items()})
    flags[ctx["score"] > sigma] |= BIT["force_outlier"]
    flags[np.asarray(sk["charge_renormalisation"], dtype=np.float64) != 0] |= BIT["charge_renormalised"]
    ctx["d_limit"] = s["dipole_tolerance"] * np.maximum(np.nan_to_num(np.asarray(sk["dipole_norm"])), DIPOLE_FLOOR)
    with np.errstate(invalid="ignore"):
        flags[np.asarray(sk["dipole_error"]) > ctx["d_limit"]] |= BIT["dipole_disagreement"]
    return flags


def _details(sk: Mapping, c: int, flag: str, ctx: dict) -> str:
    """The detail text of config ``c`` (row in its shard's sketch) for ``flag``."""
    g = ctx["g"][c]
    if flag == "duplicate":
        return f"duplicate of {ctx['name'](ctx['original'][g])} (positions within {EXACT_TOLERANCE:g} Å)"
    if flag == "near_duplicate":
        return (f"near duplicate of {ctx['name'](ctx['original'][g])}: max |Δr| {ctx['deviation'][g]:.4g} Å after "
                f"removing the translation (tolerance {ctx['tol']:g} Å)")
    if flag == "energy_outlier":
        (med, sig, _), r = ctx["energy"], ctx["resid"][g]
        return (f"energy per atom after E0 {r:.6g} eV, median {med:.6g} eV, {abs(r - med) / sig:.1f} robust sigmas "
                f"({sig:.3g} eV/atom)")
    if flag == "force_outlier":
        col = ctx["col"][c]
        z = int(sk["elements"][col])
        fm, fs, _ = ctx["forces"][z]
        el = chemical_symbols[z]
        return (f"max |F| {sk['force_max'][c, col]:.6g} eV/Å on atom {int(sk['force_atom'][c, col])} ({el}), {el} "
                f"median {fm:.4g} eV/Å, {ctx['score'][c]:.1f} robust sigmas ({fs:.3g} eV/Å)")
    if flag == "charge_renormalised":
        return f"charges shifted by total_charge - sum(q) = {sk['charge_renormalisation'][c]:+.6g} e at ingest"
    return (f"|μ_DFT - μ(charges, multipoles)| {sk['dipole_error'][c]:.4g} e·Å, |μ_DFT| {sk['dipole_norm'][c]:.4g} "
            f"e·Å, threshold {ctx['d_limit'][c]:.4g} e·Å")


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
