"""Quality flags of a dataset: duplicates, near duplicates, outliers, renormalised charges, dipole
disagreements (pure numpy: arrays in, arrays out; the I/O is in scfdata/commands/quality.py).

Two steps, so that the flags of a dataset need memory bounded by one shard (plus a few numbers per config):

- :func:`shard_sketch` (``sketch``) reduces one shard to a small per-config sketch: a content hash, a
  composition hash, the exact-duplicate key and the near-duplicate key (``keys``), per element the largest
  |F| of the config and its atom, a sparse histogram of log10 |F| per element (mergeable: counts add), the
  element counts and energy of each config, and the per-config values of the local flags.
- :func:`flag_dataset` (``flags``) merges the sketches in shard order: duplicates (``duplicates``:
  :func:`candidate_pairs`, :func:`pair_deviations`, :func:`resolve_duplicates`), energy outliers
  (``energy``), force outliers (``robust``).

Modules, one job each: ``settings`` (flag names and bits, defaults, :func:`check_settings`), ``segments``
(reductions over ragged atom arrays), ``keys``, ``sketch``, ``duplicates``, ``energy``, ``robust``
(median/MAD, mergeable |F| histograms, force scores), ``flags``.

Duplicates. ``duplicate``: same species in the same order, same pbc, same total charge and external
field (when given), same cell (compared for periodic
configs only: the cell of an open-boundary config has no effect on any target) and every atom within
``EXACT_TOLERANCE`` (1e-6 Å). ``near_duplicate``: same species in the same order, same pbc (cells within
the tolerance when periodic), every atom within ``near_duplicate_tolerance`` after removing the
translation (the centroids are aligned). A duplicate names its group's first copy; a near duplicate is
compared with first copies only (``duplicates``).

Outliers. ``energy_outlier``: (E − Σ_z n_z E0_z)/N after an E0 least-squares fit (statistics.py's mergeable
QR sums; refitted once without the configs beyond the threshold, so one absurd energy does not move every
E0), more than ``outlier_sigma`` robust sigmas (1.4826 × MAD) from the median. ``force_outlier``: a config
whose largest |F| on an element lies more than ``outlier_sigma`` robust sigmas above that element's median
|F| over the dataset (median and MAD from the merged histograms, bins of 0.2 % in |F|). Robust sigmas are
at least ``SIGMA_FLOOR`` (so that exact data do not flag rounding noise); fewer than ``MIN_SAMPLES`` values
give no outlier flag. ``charge_renormalised``: the ingest field ``charge_renormalisation`` (total_charge −
Σq before the shift) is non-zero. ``dipole_disagreement``: open-boundary configs (pbc FFF) with a DFT dipole
(per-component mask) and charges or atomic multipoles: |μ_DFT − (Σ q_i r_i + Σ p_i)| over the present
components above ``dipole_tolerance`` × max(|μ_DFT|, 1 e·Å), about the origin (0, 0, 0) (FHI-aims' convention
for charged clusters). Masked or absent targets never flag.
"""

from .duplicates import PAIR_ATOMS, candidate_pairs, first_of_content, pair_deviations, resolve_duplicates
from .energy import energy_residuals, energy_sums, fit_e0
from .flags import flag_dataset
from .keys import composition_keys, content_keys, exact_keys, near_keys
from .robust import (
    LOG_F_MAX,
    LOG_F_MIN,
    LOG_F_STEP,
    MAD_SCALE,
    MIN_SAMPLES,
    N_F_BINS,
    SIGMA_FLOOR,
    force_scores,
    histogram_centre,
    merge_histograms,
    robust_centre,
)
from .settings import BIT, DEFAULTS, DIPOLE_FLOOR, EXACT_TOLERANCE, FLAG_NAMES, check_settings
from .sketch import shard_sketch

__all__ = ["BIT", "DEFAULTS", "DIPOLE_FLOOR", "EXACT_TOLERANCE", "FLAG_NAMES", "LOG_F_MAX", "LOG_F_MIN", "LOG_F_STEP",
           "MAD_SCALE", "MIN_SAMPLES", "N_F_BINS", "PAIR_ATOMS", "SIGMA_FLOOR", "candidate_pairs", "check_settings",
           "composition_keys", "content_keys", "energy_residuals", "energy_sums", "exact_keys", "first_of_content",
           "fit_e0", "flag_dataset", "force_scores", "histogram_centre", "merge_histograms", "near_keys",
           "pair_deviations", "resolve_duplicates", "robust_centre", "shard_sketch"]
