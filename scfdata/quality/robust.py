"""Robust statistics of the outlier flags: median and robust sigma (1.4826 × MAD, floored) of values, the
mergeable sparse histograms of log10 |F| per element (counts add over shards) with their median and MAD,
and the per-config force z-scores."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

MAD_SCALE = 1.4826  # robust sigma = 1.4826 × MAD (a normal distribution's sigma)
MIN_SAMPLES = 20  # fewer values give no outlier flag
SIGMA_FLOOR = {"energy": 1e-6, "forces": 1e-6}  # eV/atom, eV/Å
#: log10 |F| histogram: bins of 0.2 % from 1e-8 to 1e8 eV/Å (smaller and larger values in the end bins)
LOG_F_MIN, LOG_F_MAX = -8.0, 8.0
LOG_F_STEP = math.log10(1.002)
N_F_BINS = int(math.ceil((LOG_F_MAX - LOG_F_MIN) / LOG_F_STEP))


def robust_centre(values: np.ndarray, floor: float) -> tuple[float, float, int]:
    """(median, robust sigma = max(1.4826 MAD, floor), n) of the finite values; NaN when fewer than
    MIN_SAMPLES."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < MIN_SAMPLES:
        return math.nan, math.nan, len(v)
    med = float(np.median(v))
    return med, max(MAD_SCALE * float(np.median(np.abs(v - med))), floor), len(v)


def force_bins(fmag: np.ndarray) -> np.ndarray:
    """The histogram bin of each |F| (|F| outside 1e-8..1e8 eV/Å, and 0, in the end bins)."""
    with np.errstate(divide="ignore"):
        lg = np.log10(fmag)
    return np.clip(np.floor((lg - LOG_F_MIN) / LOG_F_STEP), 0, N_F_BINS - 1).astype(np.int64)


def merge_histograms(total: dict[int, np.ndarray], rows: np.ndarray) -> None:
    """Add a sketch's sparse rows (element, bin, count) to dense per-element histograms (in place)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    for z in np.unique(rows[:, 0]):
        sel = rows[rows[:, 0] == z]
        h = total.setdefault(int(z), np.zeros(N_F_BINS, dtype=np.int64))
        np.add.at(h, sel[:, 1], sel[:, 2])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2.0)])


def histogram_centre(counts: np.ndarray) -> tuple[float, float, int]:
    """(median, robust sigma, n) of |F| from a log10 histogram (bin centres; 0.1 % precision)."""
    n = int(counts.sum())
    if n < MIN_SAMPLES:
        return math.nan, math.nan, n
    centres = 10.0 ** (LOG_F_MIN + (np.arange(N_F_BINS) + 0.5) * LOG_F_STEP)
    nz = counts > 0
    med = _weighted_median(centres[nz], counts[nz])
    mad = _weighted_median(np.abs(centres[nz] - med), counts[nz])
    return med, max(MAD_SCALE * mad, SIGMA_FLOOR["forces"]), n


def force_scores(elements: np.ndarray, force_max: np.ndarray, centre: Mapping[int, tuple]) -> tuple:
    """Per config the largest robust z-score of its per-element largest |F| and that element's column
    (-1 where no element has statistics)."""
    med = np.array([centre.get(int(z), (np.nan, np.nan))[0] for z in elements], dtype=np.float64)
    sig = np.array([centre.get(int(z), (np.nan, np.nan))[1] for z in elements], dtype=np.float64)
    z = (np.asarray(force_max, dtype=np.float64) - med) / sig
    z = np.where(np.isfinite(z), z, -np.inf)
    col = np.argmax(z, axis=1) if z.shape[1] else np.zeros(len(z), dtype=np.int64)
    best = z[np.arange(len(z)), col] if z.shape[1] else np.full(len(z), -np.inf)
    return best, np.where(np.isfinite(best), col, -1)
