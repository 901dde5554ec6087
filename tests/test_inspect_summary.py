"""inspect's summary read in one pass: the loss table from the coverage it read, shapes without decoding
strings, and ``problems=False`` (what report.md uses) differing only by the ``problems`` entry."""

from __future__ import annotations

import numpy as np

from scfdata.columns import Columns
from scfdata.h5io import ScfdataFile, write_columns
from scfdata.inspect import summarize
from scfdata.losses import supported_losses


def _file(path):
    n_mol = np.array([1, 2, 3, 2])
    n_at = 3 * n_mol
    rng = np.random.default_rng(5)
    forces = rng.normal(size=(int(n_at.sum()), 3))
    forces[:3] = np.nan  # config 0: forces absent (masked), stored as NaN
    cols = Columns(
        n_atoms=n_at, n_molecules=n_mol,
        configs={"energy": rng.normal(size=4), "dipole": rng.normal(size=(4, 3))},
        atoms={"numbers": np.tile([8, 1, 1], int(n_mol.sum())), "forces": forces,
               "molecule": np.concatenate([np.repeat(np.arange(k), 3) for k in n_mol])},
        molecules={"molecular_forces": rng.normal(size=(int(n_mol.sum()), 3)),
                   "molecule_formula": np.array(["H2O", "H2O", "H2O", "HHO", "H2O", "H2O", "H2O", "OH2"])},
        masks={"energy": np.array([True, True, False, True]), "dipole": np.ones((4, 3), bool),
               "forces": np.array([False, True, True, True]), "molecule": np.ones(4, bool),
               "molecular_forces": n_mol >= 2})
    return write_columns(path, cols)


def test_losses_shapes_and_stats_are_those_of_the_file(tmp_path):
    path = _file(tmp_path / "s.h5")
    s = summarize(path)
    assert s["losses"] == supported_losses(path)  # the support check reading the file itself
    assert s["losses"]["molecular_forces"]["n_configs"] == 3 and s["losses"]["energy_per_atom"]["n_configs"] == 3
    assert not s["losses"]["stress"]["supported"]
    with ScfdataFile(path) as f:
        for name, e in s["fields"].items():
            assert e["shape"] == list(np.asarray(f.read(name)).shape[1:]), name
        forces = np.asarray(f.read("forces"))[3:]
    assert s["fields"]["molecule_formula"]["shape"] == [] and "min" not in s["fields"]["molecule_formula"]
    e = s["fields"]["forces"]
    assert e["coverage"] == 3 and e["min"] == forces.min() and e["max"] == forces.max()
    assert abs(e["mean"] - forces.mean()) < 1e-12


def test_without_problems_only_the_problems_entry_is_left_out(tmp_path):
    path = _file(tmp_path / "s.h5")
    full, light = summarize(path), summarize(path, problems=False)
    assert full["problems"] == [] and "problems" not in light
    assert {k: v for k, v in full.items() if k != "problems"} == light


def test_problems_still_come_from_verify(tmp_path):
    """A stored value changed after writing: inspect warns (the checksum), report's summary does not read it."""
    import h5py

    path = _file(tmp_path / "s.h5")
    with h5py.File(path, "r+") as h5:
        h5["configs/energy"][1] = 123.0
    problems = summarize(path)["problems"]
    assert any("configs/energy" in p and "checksum" in p for p in problems), problems
    assert "problems" not in summarize(path, problems=False)
