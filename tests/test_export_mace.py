"""MACE itself reads what `scfdata export` writes (the `[mace]` extra: skipped without mace-torch)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.h5io import ScfdataFile, assemble, read_columns, write_columns

mace_data = pytest.importorskip("mace.data")
torch = pytest.importorskip("torch")
from mace.tools import AtomicNumberTable, torch_geometric  # noqa: E402

DATA = Path(__file__).parent / "data"  # (not imported from conftest: tests/losses has one too)
#: The key mapping of the MACE_SCF water clusters (as tests/conftest.py's `mace_scf_keys`).
MACE_SCF_KEYS = {
    "info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole", "total_charge": "total_charge",
                  "fermi_level": "the_fermi_level", "external_field": "the_external_field"},
    "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"},
}


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    d = tmp_path_factory.mktemp("mace")
    (d / "keys.yaml").write_text(json.dumps(MACE_SCF_KEYS))
    base = d / "base.h5"
    assert main(["ingest", str(DATA / "mace_scf_water_clusters_40.xyz"), "--keys", str(d / "keys.yaml"),
                 "-o", str(base)]) == 0
    assert main(["derive", "esps", str(base), "-o", str(d / "esps.h5")]) == 0
    cols, _ = read_columns(base)
    mol = np.concatenate([np.arange(k) // 3 for k in cols.n_atoms])
    mask = np.ones(cols.n_configs, dtype=bool)
    mask[2] = False
    write_columns(d / "mol.h5", Columns(n_atoms=cols.n_atoms, n_molecules=(cols.n_atoms + 2) // 3,
                                        atoms={"molecule": mol}, masks={"molecule": mask}))
    return assemble(d / "train.h5", [[base, d / "esps.h5", d / "mol.h5"]])


@pytest.fixture(autouse=True)
def float64():
    """MACE_SCF trains in float64 (`--default_dtype float64`): values must then arrive exactly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _t(x):
    return np.asarray(x.detach().cpu().numpy(), dtype=np.float64)


def test_mace_hdf5dataset_reads_the_export(water, tmp_path):
    out = tmp_path / "mace"
    assert main(["export", str(water), "--format", "mace", "-o", str(out), "--n-shards", "2"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mace_data.dataset_from_sharded_hdf5(str(out / "train"), z_table=AtomicNumberTable([1, 8]), r_max=4.0)
        files = sorted((out / "train").iterdir())
        assert [p.name for p in files] == ["train_0.h5", "train_1.h5"]
        with ScfdataFile(water) as f:
            ptr = f.atom_ptr
            order = list(range(f.n_configs))  # glob order of the shards may differ: match by positions
            by_pos = {f.read("positions")[ptr[i]].tobytes(): i for i in order}
            seen = set()
            for k in range(len(ds)):
                d = ds[k]
                i = by_pos[_t(d.positions)[0].tobytes()]
                seen.add(i)
                s = slice(ptr[i], ptr[i + 1])
                np.testing.assert_array_equal(_t(d.positions), f.read("positions")[s])
                np.testing.assert_array_equal(_t(d.forces), f.read("forces")[s])
                assert float(d.energy) == f.read("energy")[i]
                np.testing.assert_array_equal(_t(d.dipole)[0], f.read("dipole")[i])
                np.testing.assert_array_equal(_t(d.dipole_weight)[0], f.read("dipole_weight")[i])
                assert float(d.total_charge) == f.read("total_charge")[i]
                assert float(d.fermi_level) == f.read("fermi_level")[i]
                np.testing.assert_array_equal(_t(d.external_field)[0],
                                              f.read("external_field")[i])
                # MACE_SCF's names arrive through MACE's pass-through
                np.testing.assert_array_equal(_t(d.electrostatic_potentials)[:, 0],
                                              f.read("esps")[s])
                np.testing.assert_array_equal(_t(d.atomic_multipoles),
                                              f.read("atomic_multipoles")[s])
                np.testing.assert_array_equal(_t(d.molID)[:, 0], f.read("molecule")[s])
                assert float(d.energy_weight) == 1.0 and float(d.weight) == 1.0
            assert seen == set(order)
        # and MACE's own loader batches it (configs with the molecule masked off included)
        loader = torch_geometric.dataloader.DataLoader(dataset=ds, batch_size=8, shuffle=False)
        n = sum(int(b.num_graphs) for b in loader)
        assert n == len(ds) == 40


def test_mace_reads_the_extxyz_with_the_heads_keys(water, tmp_path):
    from mace.data.utils import KeySpecification, load_from_xyz

    out = tmp_path / "out.xyz"
    assert main(["export", str(water), "--format", "extxyz", "-o", str(out), "--keys-out",
                 str(tmp_path / "heads.yaml")]) == 0
    import yaml

    head = yaml.safe_load((tmp_path / "heads.yaml").read_text())["heads"]["Default"]
    spec = KeySpecification.from_defaults()  # as MACE's run_train builds it from a heads entry
    spec.update(info_keys=head["info_keys"], arrays_keys=head["arrays_keys"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, configs = load_from_xyz(str(out), key_specification=spec)
    with ScfdataFile(water) as f:
        ptr = f.atom_ptr
        assert len(configs) == f.n_configs
        for i, c in enumerate(configs):
            s = slice(ptr[i], ptr[i + 1])
            assert c.properties["energy"] == f.read("energy")[i]
            np.testing.assert_array_equal(c.properties["atomic_multipoles"], f.read("atomic_multipoles")[s])
            np.testing.assert_array_equal(c.properties["electrostatic_potentials"], f.read("esps")[s])
            np.testing.assert_array_equal(c.property_weights["dipole"], f.read("dipole_weight")[i])
            assert (c.property_weights["molID"] == 0.0) == (i == 2)


def test_mace_reads_weight_zero_for_what_an_energy_forces_dataset_lacks(tmp_path):
    """The most common dataset (energies and forces only): MACE's own HDF5Dataset must read weight 0
    for stress, virials, dipole, charges and polarizability (its default for a missing weight is 1.0,
    which would train a stress loss towards zero)."""
    keys = {"info_keys": {"energy": "AIMS_energy"}, "arrays_keys": {"forces": "AIMS_forces"}}
    (tmp_path / "keys.yaml").write_text(json.dumps(keys))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(DATA / "mace_scf_water_clusters_40.xyz"), "--keys", str(tmp_path / "keys.yaml"),
                 "-o", str(base)]) == 0
    train = assemble(tmp_path / "train.h5", [[base]])
    out = tmp_path / "mace"
    assert main(["export", str(train), "--format", "mace", "-o", str(out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mace_data.HDF5Dataset(str(out / "train" / "train_0.h5"), r_max=4.0, z_table=AtomicNumberTable([1, 8]))
        assert len(ds) == 40
        batch = next(iter(torch_geometric.dataloader.DataLoader(dataset=ds, batch_size=40, shuffle=False)))
    with ScfdataFile(train) as f:
        np.testing.assert_array_equal(_t(batch.energy), f.read("energy"))
        np.testing.assert_array_equal(_t(batch.forces), f.read("forces"))
    np.testing.assert_array_equal(_t(batch.energy_weight), np.ones(40))
    np.testing.assert_array_equal(_t(batch.forces_weight), np.ones(40))
    for name in ("stress_weight", "virials_weight", "charges_weight", "dipole_weight", "polarizability_weight"):
        w = _t(getattr(batch, name))
        assert w.shape[0] == 40 and not w.any(), name
