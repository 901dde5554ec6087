"""Loss weights that make every term's initial contribution comparable, from the target scales of a
statistics.json (pure: dicts in, dicts and text out; no files).

The rule: ``w = 1 / s²`` with ``s`` the rms of the term's entry error when the model predicts zero
(for the energy: predicts Σ E0, so ``s`` is the rms of the per-atom energy after E0). A term of
:class:`~scfdata.losses.WeightedLoss` is the masked mean of w·e² over its entries (scfdata arithmetic,
config weights 1), so each weighted term starts at about 1 and none dominates the first epochs.

Not supported: the ``_per_atom`` variants other than the energy (statistics.json holds no per-atom scale
for them: use the plain term), MACE_SCF's model-internal terms (no reference data, no scale), targets
whose rms is 0 or unknown, and the ``mace_scf`` arithmetic (its property weights and normalisations differ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..fields import FIELDS
from .registry import LOSSES

#: loss -> (path of its scale in statistics.json, what the scale is)
SCALES: dict[str, tuple[tuple[str, ...], str]] = {
    "energy_per_atom": (("energy_per_atom", "rms"), "rms of the per-atom energy after E0, (E − Σ E0)/N"),
    "forces": (("forces", "rms"), "rms force component"),
    **{name: (("targets", name, "rms"), f"rms of the {name} entries")
       for name in ("stress", "atomic_multipoles", "total_charge", "dipole", "polarizability", "fermi_level",
                    "esps", "molecular_forces", "cluster_virial")},
}

RULE = ("w = 1/s², s = rms of the term's entry error at a zero prediction (energy: at Σ E0, i.e. the rms\n"
        "#   per-atom energy after E0), so that every weighted term starts at about 1 (scfdata arithmetic,\n"
        "#   config weights 1)")


def _lookup(statistics: Mapping, path: tuple[str, ...]):
    value = statistics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def suggest_weights(statistics: Mapping, support: Mapping[str, Mapping]) -> tuple[dict, dict[str, str]]:
    """(suggested, skipped): ``suggested`` maps each supported loss with a scale to
    ``{"weight": 1/s², "scale": s, "unit": ..., "what": ...}``; ``skipped`` maps every other supported
    loss to why it has no suggestion. ``support`` is :func:`scfdata.losses.supported_losses`'s answer."""
    suggested: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name, s in support.items():
        if not s.get("supported"):
            continue
        spec = LOSSES[name]
        if spec.kind == "model":
            skipped[name] = "model-internal (reads model outputs only: no target scale); weight it by hand"
            continue
        if name not in SCALES:
            plain = name.removesuffix("_per_atom")
            skipped[name] = f"statistics.json has no per-atom scale of {spec.target}" + (
                f"; use {plain}" if plain in SCALES else "")
            continue
        path, what = SCALES[name]
        scale = _lookup(statistics, path)
        if scale is None:
            skipped[name] = f"statistics.json has no {'.'.join(path)} (no training config with {spec.target})"
        elif not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            skipped[name] = (f"its scale {'.'.join(path)} is {scale!r}: the target is zero in every training config, "
                             "a zero prediction is exact; weight it by hand")
        else:
            unit = FIELDS[spec.target].unit + ("/atom" if name == "energy_per_atom" else "")
            suggested[name] = {"weight": 1.0 / scale**2, "scale": float(scale), "unit": unit, "what": what}
    return suggested, skipped


def yaml_number(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits as a YAML float that every YAML reader reads as a float
    (a mantissa with a point: ``1.0e-05``, not ``1e-05``, which YAML 1.1 reads as a string)."""
    text = f"{x:.{digits}g}"
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


def weights_yaml(suggested: Mapping[str, Mapping], skipped: Mapping[str, str], source: str = "") -> str:
    """The suggestion as YAML text: comments with the rule and the scales, then a ``loss:`` block to
    paste into a ``train_schedule`` stage, then (as comments) the supported losses left out and why."""
    lines = [f"# loss weights suggested by `scfdata check --suggest-weights`{f' from {source}' if source else ''}",
             f"# rule: {RULE}"]
    if suggested:
        lines.append("loss:")
        width = max(len(n) + len(yaml_number(s["weight"])) for n, s in suggested.items()) + 2
        for name, s in suggested.items():
            entry = f"  {name}: {yaml_number(s['weight'])}"
            lines.append(f"{entry.ljust(width + 2)}  # s = {s['scale']:.4g} {s['unit']} ({s['what']})")
    else:
        lines.append("# no supported loss has a target scale in the statistics: nothing to suggest")
    by_reason: dict[str, list[str]] = {}
    for name, why in skipped.items():
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        lines.append(f"# not suggested: {', '.join(names)}: {why}")
    return "\n".join(lines)
