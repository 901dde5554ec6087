"""Derived molecular targets: molecules (assignment, unwrapped centres, formulae), molecular forces,
cluster virial. Physics in scfdata.reference.molecules / .molecular; this module only adds masks.

Masks (never zero targets): molecular_forces needs forces and at least two molecules in an assignment
that is not an extended network; cluster_virial additionally needs an open boundary (FFF), because for
periodic configs W = sum_M R_M . F_M depends on which image of each molecule is taken.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase.data import atomic_masses

from .columns import Columns
from .derive import Derived
from .targets import TARGETS


def _global_molecule(cols: Columns) -> np.ndarray:
    return cols.atoms["molecule"].astype(np.int64) + np.repeat(cols.molecule_ptr[:-1], cols.n_atoms)


def molecules_settings(settings: dict) -> dict:
    """The molecules settings with their defaults; ValueError (one line) for a bad pair_overrides entry."""
    from .reference.molecules import _cutoff_table

    s = {**TARGETS["molecules"].defaults(), **{k: v for k, v in settings.items() if k != "enabled"}}
    if s["source"] not in ("connectivity", "key"):
        raise ValueError(f"reference.molecules.source must be 'connectivity' or 'key', got {s['source']!r}")
    try:
        _cutoff_table(s["covalent_scale"], s["pair_overrides"])
    except ValueError as e:
        raise ValueError(f"reference.molecules: {e}; element pairs are written like Na-Cl") from None
    return s


def derive_molecules(cols: Columns, settings: dict) -> Derived:
    from .reference.molecular import molecule_centres
    from .reference.molecules import assign_molecules_batch, molecules_from_key

    s = molecules_settings(settings)
    given = np.ones(cols.n_configs, bool)
    if s["source"] == "key":
        if "molecule" not in cols.atoms:
            raise ValueError("reference.molecules.source: key needs a per-atom molecule key: map it in the "
                             "dataset's keys, e.g. arrays_keys: {molecule: molID}")
        a = molecules_from_key(cols.atoms["molecule"], cols.atom_ptr, cols.atoms["positions"],
                               cols.configs["cell"], cols.configs["pbc"], numbers=cols.atoms["numbers"],
                               covalent_scale=s["covalent_scale"], pair_overrides=s["pair_overrides"])
        # a frame without the key holds a placeholder (ids 0): its assignment stays masked
        given = np.asarray(cols.masks.get("molecule", given), dtype=bool)
    else:
        if "molecule" in cols.atoms and np.asarray(cols.masks.get("molecule", True)).any():
            raise ValueError("`molecule` is mapped from the input files, but reference.molecules.source is "
                             "connectivity: set source: key to use the mapped ids, or remove `molecule` from "
                             "the dataset's keys")
        a = assign_molecules_batch(cols.atoms["numbers"], cols.atoms["positions"], cols.atom_ptr,
                                   cols.configs["cell"], cols.configs["pbc"],
                                   covalent_scale=s["covalent_scale"], pair_overrides=s["pair_overrides"])
    n_mol = np.asarray(a.n_molecules, dtype=np.int64)
    mol_ptr = np.r_[0, np.cumsum(n_mol)]
    glob = a.molecule + np.repeat(mol_ptr[:-1], cols.n_atoms)
    masses = atomic_masses[cols.atoms["numbers"]]
    centres = molecule_centres(a.unwrapped_positions, glob, int(mol_ptr[-1]), masses=masses, centre=s["centre"])
    valid = ~np.asarray(a.extended, dtype=bool) & given
    frag = Columns(
        n_atoms=cols.n_atoms,
        n_molecules=n_mol,
        atoms={"molecule": a.molecule.astype(np.int64)},
        molecules={"molecule_centre": centres, "molecule_formula": np.asarray(a.formula, dtype=str)},
        masks={"molecule": valid, "molecule_centre": valid, "molecule_formula": valid},
    )
    masked = Counter(r for r, ok in zip(a.reason, given) if r and ok)
    masked["no `molecule` key in the frame (source: key)"] = int((~given).sum())
    by = {"target": "molecules", **s}
    return Derived(frag, {"molecule": by, "molecule_centre": by, "molecule_formula": by}, dict(masked))


def _molecular_mask(cols: Columns, target: str) -> tuple[np.ndarray, Counter]:
    """Configs that carry the target: forces present, and the reference rules (>= 2 molecules, no
    extended network, open boundary for the cluster virial); per-reason counts of the others."""
    from .reference.molecular import molecular_masks

    has_forces = cols.masks.get("forces", np.zeros(cols.n_configs, bool))
    mask, reasons = molecular_masks(cols.n_molecules, ~cols.masks["molecule"], cols.configs["pbc"], target=target)
    notes = Counter(r for r, f in zip(reasons, has_forces) if r and f)
    notes["no forces"] = int((~has_forces).sum())
    return mask & has_forces, notes


def derive_molecular_forces(cols: Columns, settings: dict) -> Derived:
    from .reference.molecular import molecular_forces

    if "molecule" not in cols.atoms:
        raise ValueError("molecular_forces needs the molecules fragment as an input (derive molecules first)")
    mask, notes = _molecular_mask(cols, "molecular_forces")
    forces = cols.atoms.get("forces", np.zeros((int(cols.n_atoms.sum()), 3)))
    fm = molecular_forces(forces, _global_molecule(cols), int(cols.n_molecules.sum()))
    frag = Columns(n_atoms=cols.n_atoms, n_molecules=cols.n_molecules, molecules={"molecular_forces": fm},
                   masks={"molecular_forces": mask})
    return Derived(frag, {"molecular_forces": {"target": "molecular_forces"}}, notes)


def derive_cluster_virial(cols: Columns, settings: dict) -> Derived:
    from .reference.molecular import cluster_virial

    if "molecular_forces" not in cols.molecules or "molecule_centre" not in cols.molecules:
        raise ValueError("cluster_virial needs the molecules and molecular_forces fragments as inputs")
    mask, notes = _molecular_mask(cols, "cluster_virial")
    molecule_config = np.repeat(np.arange(cols.n_configs), cols.n_molecules)
    w = cluster_virial(cols.molecules["molecule_centre"], cols.molecules["molecular_forces"], molecule_config,
                       cols.n_configs)
    frag = Columns(n_atoms=cols.n_atoms, configs={"cluster_virial": np.where(mask, w, 0.0)},
                   masks={"cluster_virial": mask})
    return Derived(frag, {"cluster_virial": {"target": "cluster_virial"}}, notes)
