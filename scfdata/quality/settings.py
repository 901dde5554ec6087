"""The quality settings and flag names: ``FLAG_NAMES`` (bit i of a flag mask is ``FLAG_NAMES[i]``), ``BIT``,
``DEFAULTS``, the fixed tolerances, and :func:`check_settings` (the ``quality:`` config block with defaults)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

import numpy as np

FLAG_NAMES = ("duplicate", "near_duplicate", "energy_outlier", "force_outlier", "charge_renormalised",
              "dipole_disagreement")
BIT = {name: np.uint32(1 << i) for i, name in enumerate(FLAG_NAMES)}

DEFAULTS = {"enabled": True, "near_duplicate_tolerance": 0.01, "outlier_sigma": 8.0, "dipole_tolerance": 0.3,
            "drop": []}
EXACT_TOLERANCE = 1e-6  # Å
DIPOLE_FLOOR = 1.0  # e·Å


def check_settings(settings: Mapping | None) -> dict:
    """The quality settings with defaults; a bad value is a ValueError naming ``quality.<key>``."""
    s = {**DEFAULTS, **(settings or {})}
    unknown = sorted(set(s) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"quality: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(DEFAULTS))}")
    if not isinstance(s["enabled"], bool):
        raise ValueError(f"quality.enabled: expected true or false, found {s['enabled']!r}")
    for key, lo, hi, strict in (("near_duplicate_tolerance", 0.0, 10.0, False), ("outlier_sigma", 0.0, 1000.0, True),
                                ("dipole_tolerance", 0.0, 1000.0, True)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v > hi or v < lo or (strict and v == lo):
            raise ValueError(f"quality.{key}: expected a number {'>' if strict else '>='} {lo:g} and <= {hi:g}, "
                             f"found {v!r}")
        s[key] = float(v)
    drop = s["drop"]
    if not isinstance(drop, (list, tuple)) or not all(isinstance(d, str) for d in drop):
        raise ValueError(f"quality.drop: expected a list of flag names, found {drop!r}")
    for d in drop:
        if d not in FLAG_NAMES:
            close = difflib.get_close_matches(d, FLAG_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"quality.drop: unknown flag {d!r}{hint}; known flags: {', '.join(FLAG_NAMES)}")
    s["drop"] = list(drop)
    if drop and not s["enabled"]:
        raise ValueError(f"quality.drop: {', '.join(drop)} listed while quality.enabled is false: no flag is computed, "
                         "so nothing would be dropped; set enabled: true or empty the drop list")
    return s
