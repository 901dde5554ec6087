"""Energy outliers: the E0 least-squares fit from mergeable per-shard sums (statistics.py's QR sums), the
residual energy per atom (E − Σ_z n_z E0_z)/N of each config, and its robust centre over the dataset,
refitted once without the configs beyond the threshold."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

from ..columns import ptr_from_counts
from ..statistics import finalize, merge, shard_sums
from .robust import SIGMA_FLOOR, robust_centre


def energy_sums(elements: np.ndarray, counts: np.ndarray, energy: np.ndarray, mask: np.ndarray) -> dict:
    """statistics.shard_sums of the energies of configs with element counts ``counts`` (n, n_elements)."""
    counts = np.asarray(counts, dtype=np.int64)
    numbers = np.repeat(np.tile(np.asarray(elements, dtype=np.int64), len(counts)), counts.reshape(-1))
    return shard_sums(numbers, ptr_from_counts(counts.sum(axis=1)), energy=(energy, mask))


def fit_e0(sums: Sequence[dict]) -> tuple[dict[int, float], dict]:
    """E0 per atomic number from mergeable energy sums (least squares, minimum norm when the compositions
    leave some E0 open: the residuals are the same), and the fit's rank and residual rms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = finalize(merge(list(sums)))
    e0 = {chemical_symbols.index(sym): v for sym, v in (stats.get("atomic_energies") or {}).items() if v is not None}
    info = stats.get("e0", {})
    return e0, {"values": {chemical_symbols[z]: v for z, v in sorted(e0.items())}, "rank": info.get("rank"),
                "n_configs": info.get("n_configs"), "undetermined": info.get("undetermined_elements", []),
                "residual_rms_per_atom": info.get("residual_rms_per_atom")}


def energy_residuals(elements, counts, energy, mask, e0: Mapping[int, float]) -> np.ndarray:
    """(E − Σ_z n_z E0_z) / N per config; NaN without an energy or with an element without E0."""
    e0v = np.array([e0.get(int(z), np.nan) for z in elements], dtype=np.float64).reshape(-1)
    counts = np.asarray(counts, dtype=np.float64).reshape(len(mask), len(e0v))
    ref = counts @ np.nan_to_num(e0v)
    unknown = (counts[:, np.isnan(e0v)] > 0).any(axis=1)
    n = np.maximum(counts.sum(axis=1), 1.0)
    ok = np.asarray(mask, dtype=bool) & ~unknown
    return np.where(ok, (np.asarray(energy, dtype=np.float64) - ref) / n, np.nan)


def energy_centre(load, offsets: np.ndarray, sigma: float, distinct: np.ndarray) -> tuple:
    """E0 fit, per-config residual energy per atom, its robust centre; refitted once without the configs
    beyond ``sigma`` robust sigmas (one absurd energy moves every E0 of a plain least squares). The fit and
    the centre use only the ``distinct`` configs (not flagged duplicate/near duplicate): 60 copies of one
    config would otherwise make the MAD 0 and every other config an outlier."""
    n_shards = len(offsets) - 1

    def residuals(e0):
        out = np.full(int(offsets[-1]), np.nan)
        for k in range(n_shards):
            sk = load(k)
            out[offsets[k]:offsets[k + 1]] = energy_residuals(sk["elements"], sk["element_counts"], sk["energy"],
                                                              sk["energy_mask"], e0)
        return out

    def fit(exclude: np.ndarray):
        parts = []
        for k in range(n_shards):
            sk = load(k)
            parts.append(energy_sums(sk["elements"], sk["element_counts"], sk["energy"],
                                     np.asarray(sk["energy_mask"], bool) & ~exclude[offsets[k]:offsets[k + 1]]))
        return fit_e0(parts)

    distinct = np.asarray(distinct, dtype=bool)
    e0, info = fit(~distinct) if offsets[-1] else ({}, {})
    resid = residuals(e0)
    centre = robust_centre(resid[distinct], SIGMA_FLOOR["energy"])
    far = np.abs(resid - centre[0]) > sigma * centre[1] if math.isfinite(centre[0]) else np.zeros(len(resid), bool)
    if (far & distinct).any():
        refit_e0, info = fit(~distinct | far)
        e0 = {**e0, **refit_e0}  # an element only the far configs hold keeps its first E0
        info.update(refit_without=int((far & distinct).sum()),
                    values={chemical_symbols[z]: v for z, v in sorted(e0.items())})
        resid = residuals(e0)
        centre = robust_centre(resid[distinct], SIGMA_FLOOR["energy"])
    return resid, centre, info
