"""Loss options and weights: what each accepts, checked once for ``WeightedLoss`` and ``scfdata check``.

A stage loss dict value is a weight (int or float, finite, ≥ 0) or ``{weight: λ, <option>: value}``.
Every loss takes ``convention`` (``scfdata``, the default, or ``mace_scf``: see ``scfdata.losses.terms``);
the other options are declared per loss in the registry. A value of the wrong type or range is an error
here, before training, never a silent zero loss (``max_l: -1`` would compare no column at all).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from numbers import Integral, Real

#: the two arithmetic conventions of every loss (see scfdata.losses.terms).
CONVENTIONS = ("scfdata", "mace_scf")

#: fourier_density's weighting forms (MACE_SCF's WeightedFourierDensity).
FOURIER_FORMS = ("poly", "gaussian", "exponential")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _one_of(choices: tuple[str, ...]) -> tuple[Callable, str]:
    return (lambda v: isinstance(v, str) and v in choices), "one of " + ", ".join(map(repr, choices))


#: option name -> (accepts(value) -> bool, what it expects, in words)
OPTION_VALUES: dict[str, tuple[Callable, str]] = {
    "max_l": (lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= 0, "an integer ≥ 0"),
    "convention": _one_of(CONVENTIONS),
    "smooth": (lambda v: isinstance(v, bool), "true or false"),
    "beta": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "offset": (_number, "a finite number"),
    "form": _one_of(FOURIER_FORMS),
    "alpha": (_number, "a finite number"),
    "k_min": (lambda v: _number(v) and v > 0, "a finite number > 0"),
}

#: the option every loss takes
COMMON_OPTIONS = {"convention": "arithmetic convention: 'scfdata' (masked means, default) or 'mace_scf'"}


def check_weight(name: str, w) -> str | None:
    """A message when ``w`` is not a finite number ≥ 0 (booleans and strings are not numbers)."""
    if isinstance(w, bool) or not isinstance(w, Real):
        return f"loss {name!r}: weight must be a number ≥ 0, got {w!r} ({type(w).__name__})"
    if not math.isfinite(float(w)) or w < 0:
        return f"loss {name!r}: weight must be a finite number ≥ 0, got {w!r}"
    return None


def check_options(name: str, options: dict, allowed: dict) -> str | None:
    """A message for the first unknown option or bad value of loss ``name``; None when all hold."""
    known = {**allowed, **COMMON_OPTIONS}
    bad = [k for k in options if k not in known]
    if bad:
        return (f"loss {name!r}: unknown option(s) {', '.join(map(repr, bad))}{did_you_mean(bad[0], known)} "
                f"(options of {name}: {', '.join(known)})")
    for key, value in options.items():
        accepts, expected = OPTION_VALUES[key]
        if not accepts(value):
            return f"loss {name!r}: option {key} must be {expected}, got {value!r} ({type(value).__name__})"
    return None


def check_convention(convention) -> str:
    """``convention`` itself, or ValueError listing the allowed values."""
    if not (isinstance(convention, str) and convention in CONVENTIONS):
        raise ValueError(f"unknown loss convention {convention!r}{did_you_mean(convention, CONVENTIONS)}: "
                         f"must be one of {', '.join(map(repr, CONVENTIONS))}")
    return convention
