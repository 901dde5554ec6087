"""Derive wiring: fragments hold the target for present configs, masked (not zeroed) elsewhere."""

import json
from pathlib import Path

import numpy as np
import pytest

from scfdata.cli import main
from scfdata.constants import K_E
from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
KEYS = {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
        "arrays_keys": {"forces": "forces", "charges": "REF_charges"}}


@pytest.fixture(scope="module")
def example_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("derive")
    (d / "keys.yaml").write_text(json.dumps(KEYS))
    out = d / "base.h5"
    inputs = [str(REPO / "examples/data" / f) for f in ("water_clusters.extxyz", "nacl_crystal.extxyz",
                                                         "water_slab.extxyz")]
    assert main(["ingest", *inputs, "--keys", str(d / "keys.yaml"), "-o", str(out), "--on-error", "reject"]) == 0
    return out


def derive(base, target, settings=None, extra=()):
    out = base.with_name(f"{target}.h5")
    assert main(["derive", target, str(base), *map(str, extra), "--settings", json.dumps(settings or {}),
                 "-o", str(out)]) == 0
    return out


def test_esps_open_clusters_equal_direct_coulomb_sum(example_base):
    out = derive(example_base, "esps")
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f:
        assert f.field_attrs("esps")["derived_by"]["max_l"] == 0  # charges-only data
        esps, mask = f.read("esps"), f.mask("esps")
        assert mask.all()
        ptr, pos, q = b.atom_ptr, b.read("positions"), b.read("charges")
        pbc = b.read("pbc")
        for c in np.flatnonzero(~pbc.any(axis=1))[:5]:
            s = slice(ptr[c], ptr[c + 1])
            r = np.linalg.norm(pos[s, None] - pos[None, s], axis=-1)
            np.fill_diagonal(r, np.inf)
            np.testing.assert_allclose(esps[s], K_E * (q[s][None, :] / r).sum(1), rtol=1e-10, atol=1e-10)


def test_dipoles_match_dft_dipole_and_mask_by_boundary(example_base):
    out = derive(example_base, "dipoles")
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f:
        mu, mask = f.read("dipole_from_multipoles"), f.mask("dipole_from_multipoles")
        pbc = b.read("pbc")
        assert mask[~pbc.any(1)].all() and not mask[pbc.all(1)].any()
        assert (mask[pbc[:, :2].all(1) & ~pbc[:, 2]] == [False, False, True]).all()
        dft, dmask = b.read("dipole"), b.mask("dipole")
        both = dmask & mask
        np.testing.assert_allclose(mu[both], dft[both], atol=1e-7)
        assert f.provenance["notes"]["max |mu_DFT - mu_multipoles| (e·Å)"] < 1e-7


def test_esps_without_charges_is_a_clear_error(tmp_path, capsys):
    keys = tmp_path / "k.yaml"
    keys.write_text(json.dumps({"info_keys": {"energy": "energy"}}))
    base = tmp_path / "b.h5"
    main(["ingest", str(REPO / "examples/data/water_clusters.extxyz"), "--keys", str(keys), "-o", str(base),
          "--on-error", "reject"])
    assert main(["derive", "esps", str(base), "-o", str(tmp_path / "e.h5")]) == 1
    assert "need atomic_multipoles or charges" in capsys.readouterr().err


def test_molecular_targets_conserve_force_and_mask_where_meaningless(example_base):
    mol = derive(example_base, "molecules")
    mf = derive(example_base, "molecular_forces", extra=[mol])
    cv = derive(example_base, "cluster_virial", extra=[mol, mf])
    with ScfdataFile(example_base) as b, ScfdataFile(mol) as m, ScfdataFile(mf) as f, ScfdataFile(cv) as c:
        pbc, types = b.read("pbc"), b.read("config_type")
        n_mol = np.diff(m.molecule_ptr)
        water = np.char.startswith(types.astype(str), "water_")
        # every TIP3P water is found as one H2O molecule, n_atoms / 3 of them
        assert (n_mol[water] == np.diff(b.atom_ptr)[water] // 3).all()
        assert set(m.read("molecule_formula")[np.repeat(water, n_mol)]) == {"H2O"}
        # the NaCl crystal is an extended network: masked, not split into fake molecules
        nacl = types == "nacl_bulk"
        assert not m.mask("molecule")[nacl].any() and not f.mask("molecular_forces")[nacl].any()
        # sum of molecular forces equals the total force, config by config
        forces, fm = b.read("forces"), f.read("molecular_forces")
        for k in np.flatnonzero(f.mask("molecular_forces"))[:10]:
            total = forces[b.atom_ptr[k]:b.atom_ptr[k + 1]].sum(0)
            np.testing.assert_allclose(fm[m.molecule_ptr[k]:m.molecule_ptr[k + 1]].sum(0), total, atol=1e-10)
        # cluster virial = sum_M R_M . F_M with R_M the molecule's geometric centre (open clusters only)
        centre, w, wmask = m.read("molecule_centre"), c.read("cluster_virial"), c.mask("cluster_virial")
        assert wmask.sum() > 0 and not wmask[pbc.any(1)].any()
        pos, mol_of_atom = b.read("positions"), m.read("molecule")
        for k in np.flatnonzero(wmask)[:5]:
            s = slice(b.atom_ptr[k], b.atom_ptr[k + 1])
            ids = mol_of_atom[s]
            expect = sum(pos[s][ids == j].mean(0) @ forces[s][ids == j].sum(0) for j in range(n_mol[k]))
            assert w[k] == pytest.approx(expect, rel=1e-10, abs=1e-12)
            own = centre[m.molecule_ptr[k]:m.molecule_ptr[k + 1]]
            np.testing.assert_allclose(own[ids[0]], pos[s][ids == ids[0]].mean(0))
