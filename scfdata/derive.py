"""Derived targets of one shard: read columns, call the pure physics in scfdata.reference, return a
fragment (the same configs, only the new fields, with masks and `derived_by` settings).

One function per target; ``DERIVERS`` maps the workflow's target names onto them. Every function is
vectorised over the shard's configs (one call into the physics, not a loop over configs), and masks a
config (never zeroes a target) where its inputs are absent or the target has no meaning, with the
reason counted in the fragment's provenance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from .columns import Columns
from .reference.esp import pbc_labels

_BOUNDARY_OF_PBC = {"FFF": "realspace", "TTT": "pbc", "TTF": "slab"}

ESPS_DEFAULTS = {"source": "multipoles", "max_l": 1, "smearing_width": 0.0, "self_interaction": "exclude",
                 "boundary": "auto", "tolerance": 1e-6}
DIPOLES_DEFAULTS = {"origin": "zero"}
MOLECULES_DEFAULTS = {"source": "connectivity", "covalent_scale": 1.2, "centre": "geometric",
                      "pair_overrides": None}


class Derived:
    """A fragment plus its provenance (settings and per-reason counts of masked configs)."""

    def __init__(self, cols: Columns, derived_by: dict, notes: dict | None = None):
        self.cols, self.derived_by, self.notes = cols, derived_by, notes or {}


def _atom_mask(cols: Columns, per_config: np.ndarray) -> np.ndarray:
    return np.repeat(per_config, cols.n_atoms)


def _multipole_source(cols: Columns, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(multipoles (N,K), per-config presence) from atomic_multipoles, or charges as l=0."""
    if settings.get("source", "multipoles") == "multipoles" and "atomic_multipoles" in cols.atoms:
        return cols.atoms["atomic_multipoles"], cols.masks["atomic_multipoles"]
    if "charges" in cols.atoms:
        return cols.atoms["charges"][:, None], cols.masks["charges"]
    if "atomic_multipoles" in cols.atoms:
        return cols.atoms["atomic_multipoles"][:, :1], cols.masks["atomic_multipoles"]
    raise ValueError(
        "the esps/fields/dipoles targets need atomic_multipoles or charges, and this dataset maps neither: "
        "add one to the dataset's `keys` (arrays_keys), or switch the target off"
    )


def _esp_settings(settings: dict) -> dict:
    if "kspace_cutoff" in settings:
        raise ValueError(
            "reference.esps.kspace_cutoff is a setting of preset: mace_scf only (scfdata's own engines choose "
            "their cut-offs from `tolerance`): remove it, or add `preset: mace_scf`"
        )
    return {**ESPS_DEFAULTS, **{k: v for k, v in settings.items() if k not in ("enabled", "preset")}}


def _refuse_mapped_input(cols: Columns, name: str) -> None:
    """A derived field must not silently replace the same field mapped from the input files."""
    if name in cols.atoms and np.asarray(cols.masks.get(name, True)).any():
        raise ValueError(
            f"`{name}` is mapped from the input files (the dataset's keys) and is also a derived target: the "
            f"derived values would replace the DFT ones. Either remove `{name}` from the keys (derive it), or "
            f"set `reference.{name}: {{enabled: false}}` (train on the mapped values)"
        )


def _external_field(cols: Columns) -> np.ndarray:
    """(n_configs, 3) external field, 0 where absent or masked."""
    given = cols.masks.get("external_field", np.ones(cols.n_configs, bool)).reshape(cols.n_configs, -1).all(1)
    return np.where(given[:, None], np.asarray(cols.configs["external_field"], float).reshape(-1, 3), 0.0)


def _esp_and_field(cols: Columns, settings: dict, with_fields: bool):
    from .reference.esp import compute_esps

    if settings.get("preset") is not None:
        from .derive_esp_preset import preset_esp_and_field

        return preset_esp_and_field(cols, settings, with_fields)
    s = _esp_settings(settings)
    _refuse_mapped_input(cols, "fields" if with_fields else "esps")
    mp, present = _multipole_source(cols, s)
    # max_l is an upper bound: data with charges only give the l=0 potential (recorded in derived_by)
    if present.any():  # (a shard without any multipoles holds a placeholder column: keep the setting)
        s["max_l"] = min(int(s["max_l"]), int(round(np.sqrt(mp.shape[1]))) - 1)
    cls = pbc_labels(cols.configs["pbc"])
    ok_boundary = np.isin(cls, list(_BOUNDARY_OF_PBC)) if s["boundary"] == "auto" else np.ones(len(cls), bool)
    live = present & ok_boundary
    notes = Counter({"no atomic_multipoles or charges in the config": int((~present).sum())})
    for c in np.unique(cls[present & ~ok_boundary]):
        notes[f"pbc {c} has no ESP boundary (auto handles FFF, TTT, TTF)"] = int((cls[present] == c).sum())
    if "external_field" in cols.configs:
        with_field = (_external_field(cols)[live] != 0).any(axis=1)
        notes["configs with an external field (not in this ESP: that of the multipoles only; "
              "preset mace_scf adds +E·r)"] = int(with_field.sum())
    n_atoms_total = int(cols.n_atoms.sum())
    esps = np.zeros(n_atoms_total)
    fields = np.zeros((n_atoms_total, 3))
    if live.any():
        sub = cols.select(np.flatnonzero(live))
        a_live = _atom_mask(cols, live)
        v, e = compute_esps(sub.atoms["positions"], mp[a_live], sub.atom_ptr, sub.configs["cell"],
                            sub.configs["pbc"], with_fields=with_fields, **s)
        esps[a_live] = v
        if with_fields:
            fields[a_live] = e
    return esps, fields, live, s, {k: v for k, v in notes.items() if v}


def derive_esps(cols: Columns, settings: dict) -> Derived:
    esps, _, live, s, notes = _esp_and_field(cols, settings, with_fields=False)
    frag = Columns(n_atoms=cols.n_atoms, atoms={"esps": esps}, masks={"esps": live})
    return Derived(frag, {"esps": {"target": "esps", **s}}, notes)


def derive_fields(cols: Columns, settings: dict) -> Derived:
    _, fields, live, s, notes = _esp_and_field(cols, settings, with_fields=True)
    frag = Columns(n_atoms=cols.n_atoms, atoms={"fields": fields}, masks={"fields": live})
    return Derived(frag, {"fields": {"target": "fields", **s}}, notes)


def derive_dipoles(cols: Columns, settings: dict) -> Derived:
    from ase.data import atomic_masses

    from .reference.dipoles import compute_dipoles, dipole_mask_from_pbc

    s = {**DIPOLES_DEFAULTS, **settings}
    mp, present = _multipole_source(cols, {"source": "multipoles"})
    masses = atomic_masses[cols.atoms["numbers"]]
    mu = compute_dipoles(cols.atoms["positions"], mp, cols.atom_ptr, masses=masses, origin=s["origin"])
    mask = present[:, None] & dipole_mask_from_pbc(cols.configs["pbc"]).astype(bool)
    notes = {}
    charged = present & (np.abs(np.add.reduceat(mp[:, 0], cols.atom_ptr[:-1]) if len(mp) else 0) > 1e-6)
    if s["origin"] != "zero" or charged.any():
        notes["charged configs (their dipole depends on the origin)"] = int(charged.sum())
    if "dipole" in cols.configs:
        both = cols.masks["dipole"] & mask
        diff = np.where(both, mu - cols.configs["dipole"], 0.0)
        n = int(both.any(axis=1).sum())
        if n:
            norms = np.linalg.norm(diff, axis=1)[both.any(axis=1)]
            # mergeable over shards: counts and sums add, maxima take the max (see commands/assemble.py)
            notes["configs with DFT and multipole dipoles"] = n
            notes["sum |mu_DFT - mu_multipoles|^2 (e²Å²)"] = float((norms**2).sum())
            notes["max |mu_DFT - mu_multipoles| (e·Å)"] = float(norms.max())
    frag = Columns(n_atoms=cols.n_atoms, configs={"dipole_from_multipoles": mu},
                   masks={"dipole_from_multipoles": mask})
    return Derived(frag, {"dipole_from_multipoles": {"target": "dipoles", **s}}, notes)


DERIVERS: dict[str, Callable[[Columns, dict], Derived]] = {
    "esps": derive_esps,
    "fields": derive_fields,
    "dipoles": derive_dipoles,
}


def register(name: str):
    def deco(fn):
        DERIVERS[name] = fn
        return fn

    return deco


from . import derive_molecular  # noqa: E402,F401  (registers molecules, molecular_forces, cluster_virial)
