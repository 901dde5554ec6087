"""The `esps`/`fields` targets with ``preset: mace_scf``: settings check, masks and notes around
:func:`scfdata.reference.mace_scf_preset.mace_scf_esps` (graph-longrange, imported when called).

``preset_settings`` is also called by the workflow's config check, so a bad preset stops before any job.
The registry (scfdata/targets.py) chooses these functions for ``preset: mace_scf``; this module imports
scfdata.derive's shared helpers, never the other way round.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .columns import Columns
from .derive import (
    _BOUNDARY_OF_PBC,
    ESPS_DEFAULTS,
    Derived,
    EspResult,
    _atom_mask,
    _external_field,
    _multipole_source,
    _refuse_mapped_input,
)
from .reference.esp import pbc_labels
from .reference.mace_scf_preset import (
    MACE_SCF_MAX_L,
    MACE_SCF_SMEARING_WIDTH,
    converged_kspace_cutoff,
    graph_longrange_version,
    mace_scf_esps,
)


def preset_settings(settings: dict) -> dict:
    """Settings of ``preset: mace_scf``: the preset fixes the convention, a few keys stay the user's.

    Honoured: ``source``, ``tolerance``, ``max_l`` (0 or 1, an upper bound as for explicit settings),
    ``smearing_width`` (0, the schema default, means MACE_SCF's 1.5 Å; a positive value is the model's σ)
    and ``kspace_cutoff`` (1/Å, default: converged from ``tolerance``). ``self_interaction`` is always
    "include"; ``boundary`` must stay "auto" (the preset has MACE_SCF's own boundary handling).
    """
    preset = settings.get("preset")
    if preset != "mace_scf":
        raise ValueError(f"Unknown reference.esps.preset {preset!r}. Must be 'mace_scf' (or no preset).")
    known = {"enabled", "preset", "source", "max_l", "smearing_width", "self_interaction", "boundary",
             "tolerance", "kspace_cutoff"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"reference.esps with preset: mace_scf: unknown key(s) {unknown}; allowed: {sorted(known)}")
    if settings.get("boundary", "auto") != "auto":
        raise ValueError(
            f"reference.esps: preset mace_scf has MACE_SCF's own boundary handling, got boundary "
            f"{settings['boundary']!r}: remove `boundary` (or set auto), or drop the preset"
        )
    max_l = int(settings.get("max_l", MACE_SCF_MAX_L))
    if max_l > 1:
        raise ValueError(
            f"reference.esps: preset mace_scf evaluates multipoles up to l = 1 (graph-longrange has no l = 2 "
            f"density), got max_l {max_l}: set max_l 0 or 1, or drop the preset"
        )
    sigma = float(settings.get("smearing_width") or 0.0) or MACE_SCF_SMEARING_WIDTH
    return {"preset": "mace_scf", "source": settings.get("source", "multipoles"), "max_l": max_l,
            "smearing_width": sigma, "self_interaction": "include",
            "tolerance": float(settings.get("tolerance", ESPS_DEFAULTS["tolerance"])),
            "kspace_cutoff": settings.get("kspace_cutoff")}


def preset_esp_and_field(cols: Columns, settings: dict, with_fields: bool):
    """``preset: mace_scf``: graph-longrange's ESP (see scfdata.reference.mace_scf_preset), masked where the
    model has no ESP (pbc other than FFF/TTT/TTF, no cell)."""
    s = preset_settings(settings)
    _refuse_mapped_input(cols, "fields" if with_fields else "esps")
    if s["kspace_cutoff"] is None:  # from the settings only: every shard gets the same (recorded in derived_by)
        s["kspace_cutoff"] = converged_kspace_cutoff(s["smearing_width"], s["tolerance"])
    mp, present = _multipole_source(cols, s)
    if present.any():  # (a shard without any multipoles holds a placeholder column: keep the setting)
        s["max_l"] = min(s["max_l"], int(round(np.sqrt(mp.shape[1]))) - 1)
    cls = pbc_labels(cols.configs["pbc"])
    cells = np.asarray(cols.configs["cell"], dtype=float).reshape(-1, 3, 3)
    has_cell = np.abs(np.linalg.det(cells)) > 1e-6 if len(cells) else np.zeros(0, bool)
    ok_boundary = np.isin(cls, list(_BOUNDARY_OF_PBC))
    live = present & ok_boundary & has_cell
    masked = Counter({"no atomic_multipoles or charges in the config": int((~present).sum())})
    for c in np.unique(cls[present & ~ok_boundary]):
        masked[f"pbc {c} has no MACE_SCF ESP (preset mace_scf handles FFF, TTT, TTF)"] = int((cls[present] == c).sum())
    masked["configs without a cell (MACE_SCF evaluates clusters in their box; give them a cell)"] = int(
        (present & ok_boundary & ~has_cell).sum())
    notes = Counter()
    n_atoms_total = int(cols.n_atoms.sum())
    esps = np.zeros(n_atoms_total)
    fields = np.zeros((n_atoms_total, 3))
    ext = None
    if "external_field" in cols.configs:
        ext = _external_field(cols)
        notes["configs with an external field (added as +E·r, MACE_SCF's convention)"] = int(
            (live & (np.abs(ext).sum(1) > 0)).sum())
    if live.any():
        sub = cols.select(np.flatnonzero(live))
        a_live = _atom_mask(cols, live)
        k, ptr = mp[a_live][:, : (s["max_l"] + 1) ** 2], sub.atom_ptr
        q_cfg = np.bincount(np.repeat(np.arange(sub.n_configs), sub.n_atoms), weights=k[:, 0],
                            minlength=sub.n_configs)
        slab = pbc_labels(sub.configs["pbc"]) == "TTF"
        notes["charged TTF slabs (graph-longrange's slab ESP lacks the charged-slab terms)"] = int(
            (slab & (np.abs(q_cfg) > 1e-6)).sum())
        notes["charged FFF/TTT configs (periodic with a neutralising background, as MACE_SCF does)"] = int(
            (~slab & (np.abs(q_cfg) > 1e-6)).sum())
        v, e = mace_scf_esps(sub.atoms["positions"], k, ptr, sub.configs["cell"], sub.configs["pbc"],
                             smearing_width=s["smearing_width"], max_l=s["max_l"],
                             kspace_cutoff=float(s["kspace_cutoff"]),
                             external_field=None if ext is None else ext[live], with_fields=with_fields)
        esps[a_live] = v
        if with_fields:
            fields[a_live] = e
    s.update(boundary="mace_scf: FFF and TTT tin-foil periodic in the config's cell (zero cell average), "
                      "TTF the same plus 4π k_e M_z z/V",
             external_field="+E·r" if ext is not None else "none",
             engine=f"graph-longrange {graph_longrange_version()}")
    return EspResult(esps, fields, live, s, masked, notes, {})


def preset_esps(cols: Columns, settings: dict) -> Derived:
    return preset_esp_and_field(cols, settings, with_fields=False).fragment(cols, "esps")


def preset_fields(cols: Columns, settings: dict) -> Derived:
    return preset_esp_and_field(cols, settings, with_fields=True).fragment(cols, "fields")


def install_hint() -> str:
    """The command that installs the preset's packages into this environment: an editable install of a
    checkout names the checkout (`pip install 'scfdata[...]'` would look for scfdata on PyPI instead).
    The extra is spelled `mace-scf`, the name pip < 24 finds in metadata that normalises extras (PEP 685)."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("scfdata").read_text("direct_url.json")
    except PackageNotFoundError:
        text = None
    url = json.loads(text).get("url", "") if text else ""
    if url.startswith("file://") and (json.loads(text).get("dir_info") or {}).get("editable"):
        from urllib.parse import unquote, urlparse

        return f"pip install -U pip && pip install -e '{unquote(urlparse(url).path)}[mace-scf]'"
    return "pip install -U pip && pip install 'scfdata[mace-scf]'"
