"""Molecule centres of periodic configs: molecules split across cell faces get the centre of the whole
molecule (up to a lattice vector), never the mean of the wrapped positions (the middle of the cell).

Expected centres come from the whole coordinates written before wrapping (tests/periodic_molecules.py).
Through `scfdata derive` and through a real snakemake run to the final file.
"""

from __future__ import annotations

import json

import numpy as np
import periodic_molecules as pm
import pytest

from scfdata.cli import main
from scfdata.h5io import ScfdataFile


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("periodic_molecules")
    frames, expected = pm.write(d / "in.extxyz")
    (d / "keys.yaml").write_text(json.dumps(pm.KEYS))
    out = d / "base.h5"
    assert main(["ingest", str(d / "in.extxyz"), "--keys", str(d / "keys.yaml"), "-o", str(out), "--on-error",
                 "raise", "--settings", json.dumps({"validation": {"max_volume_per_atom": None}})]) == 0
    return out, expected, frames


def derive(base_path, target, settings, extra=(), name=None):
    out = base_path.with_name(f"{name or target}.h5")
    assert main(["derive", target, str(base_path), *map(str, extra), "--settings", json.dumps(settings),
                 "-o", str(out)]) == 0
    return out


def centres_by_config(f):
    """[(centres of config k, per-atom molecule index of config k)] from a file with molecules."""
    centre, mol = f.read("molecule_centre"), f.read("molecule")
    mptr, aptr = f.raw("configs", "molecule_ptr")[:], f.atom_ptr
    return [(centre[mptr[k]:mptr[k + 1]], mol[aptr[k]:aptr[k + 1]]) for k in range(len(aptr) - 1)]


def test_the_test_molecules_really_straddle_the_faces(base):
    """The fixture is what it claims: a wrapped molecule's mean lies off its true centre by more than 1 Å."""
    _, expected, frames = base
    n_split = 0
    for a, mols in zip(frames, expected):
        for idx, geometric, *_ in mols:
            n_split += np.abs(a.positions[idx].mean(0) - geometric).max() > 1.0
    assert n_split >= 8


@pytest.mark.parametrize("centre", ["geometric", "mass"])
def test_centres_of_molecules_split_across_cell_faces(base, centre):
    path, expected, _ = base
    out = derive(path, "molecules", {"centre": centre}, name=f"molecules_{centre}")
    with ScfdataFile(out) as f:
        assert f.mask("molecule").all()  # no fake extended network
        assert np.diff(f.raw("configs", "molecule_ptr")[:]).tolist() == [len(m) for m in expected]
        for (c, mol), exp in zip(centres_by_config(f), expected):
            pm.assert_centres(c, mol, exp, which=centre)


def test_molecular_forces_and_cluster_virial_of_the_split_molecules(base):
    path, expected, frames = base
    mol = derive(path, "molecules", {})
    mf = derive(path, "molecular_forces", {}, extra=[mol])
    cv = derive(path, "cluster_virial", {}, extra=[mol, mf])
    with ScfdataFile(mol) as m, ScfdataFile(mf) as f, ScfdataFile(cv) as c:
        fm, mptr = f.read("molecular_forces"), m.raw("configs", "molecule_ptr")[:]
        per_atom = m.read("molecule")
        assert f.mask("molecular_forces").all()
        w, wmask = c.read("cluster_virial"), c.mask("cluster_virial")
        assert wmask.tolist() == [False, False, False, True]  # periodic W depends on the images taken
        for k, (a, mols) in enumerate(zip(frames, expected)):
            ids = per_atom[m.atom_ptr[k]:m.atom_ptr[k + 1]]
            for idx, *_ in mols:
                np.testing.assert_allclose(fm[mptr[k] + ids[idx[0]]], a.arrays["F"][idx].sum(0), atol=1e-7)
        k = 3  # the open cluster: W = sum_M R_M . F_M with the whole molecules' centres
        a = frames[k]
        expect = sum(g @ a.arrays["F"][idx].sum(0) for idx, g, *_ in expected[k])
        assert w[k] == pytest.approx(expect, abs=1e-6)


@pytest.mark.slow
def test_workflow_final_file_has_whole_molecule_centres(periodic_workflow_run):
    path, expected, frames = periodic_workflow_run
    with ScfdataFile(path) as f:
        assert f.n_configs == len(frames)
        order = f.read("source")[:, 1]  # input frame of each stored config
        got = centres_by_config(f)
        assert f.mask("molecule").all()
        for k, frame_index in enumerate(order):
            pm.assert_centres(*got[k], expected[frame_index])
