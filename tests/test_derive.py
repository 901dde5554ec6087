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


# ------------------------------------------------------------------ preset: mace_scf (graph-longrange)
def derive_as(base, name, target, settings):
    """`scfdata derive` into <name>.h5 next to base (several settings of one target side by side)."""
    out = base.with_name(f"{name}.h5")
    assert main(["derive", target, str(base), "--settings", json.dumps(settings), "-o", str(out)]) == 0
    return out


@pytest.fixture
def graph_longrange():
    import torch

    torch.serialization.add_safe_globals([slice])  # e3nn 0.4.4 under torch >= 2.6
    return pytest.importorskip("graph_longrange.features")


def test_esps_preset_mace_scf_is_graph_longranges_esp(example_base, graph_longrange):
    from scfdata.reference.mace_scf_preset import coulomb_constant, mace_scf_esps

    # the settings as the workflow passes them (schema defaults filled in; the preset overrides them)
    out = derive_as(example_base, "preset", "esps", {"preset": "mace_scf", "smearing_width": 0.0, "max_l": 1,
                                                     "boundary": "auto", "self_interaction": "exclude",
                                                     "tolerance": 1e-6})
    explicit = derive_as(example_base, "explicit", "esps", {"smearing_width": 1.5, "self_interaction": "include"})
    fields = derive_as(example_base, "preset_fields", "fields", {"preset": "mace_scf"})
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f, ScfdataFile(explicit) as x, \
            ScfdataFile(fields) as e:
        by = f.field_attrs("esps")["derived_by"]
        assert by["preset"] == "mace_scf" and by["engine"] == "graph-longrange 0.4.4"
        assert (by["smearing_width"], by["self_interaction"], by["max_l"]) == (1.5, "include", 0)  # charges only
        assert by["kspace_cutoff"] >= 6 / 1.5
        esps, mask = f.read("esps"), f.mask("esps")
        assert mask.all()
        # the stored target is graph-longrange's ESP for the stored charges, config by config
        ptr, pbc = b.atom_ptr, b.read("pbc")
        v, _ = mace_scf_esps(b.read("positions"), b.read("charges"), ptr, b.read("cell"), pbc,
                             kspace_cutoff=by["kspace_cutoff"])
        np.testing.assert_allclose(esps, v, rtol=0, atol=1e-12)
        # 3D periodic (NaCl): the same convention as scfdata's own engine with sigma 1.5, self included
        bulk = np.repeat(pbc.all(1), np.diff(ptr))
        assert bulk.any()
        np.testing.assert_allclose(esps[bulk] * K_E / coulomb_constant(), x.read("esps")[bulk], rtol=0, atol=1e-6)
        assert e.field_attrs("fields")["derived_by"]["preset"] == "mace_scf" and e.mask("fields").all()
    fx = derive_as(example_base, "explicit_fields", "fields", {"smearing_width": 1.5, "self_interaction": "include"})
    with ScfdataFile(fields) as e, ScfdataFile(fx) as ex:
        np.testing.assert_allclose(e.read("fields")[bulk] * K_E / coulomb_constant(), ex.read("fields")[bulk],
                                   rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:config .* carries a net charge")
def test_esps_preset_on_mace_scf_clusters_adds_the_external_field(tmp_path, mace_scf_keys, water_fixture,
                                                                  graph_longrange):
    from scfdata.reference.mace_scf_preset import coulomb_constant

    keys = tmp_path / "keys.yaml"
    keys.write_text(json.dumps(mace_scf_keys))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(water_fixture), "--keys", str(keys), "-o", str(base)]) == 0
    out = derive_as(base, "preset", "esps", {"preset": "mace_scf"})
    # the clusters sit in 40 Å boxes: MACE_SCF's ESP is the periodic one in that box (scfdata: boundary pbc)
    explicit = derive_as(base, "explicit", "esps", {"smearing_width": 1.5, "self_interaction": "include",
                                                    "boundary": "pbc"})
    with ScfdataFile(base) as b, ScfdataFile(out) as f, ScfdataFile(explicit) as x:
        by = f.field_attrs("esps")["derived_by"]
        assert by["max_l"] == 1 and by["external_field"] == "+E·r"  # l = 2 data: MACE_SCF uses l <= 1
        assert f.provenance["notes"]["configs with an external field (added as +E·r, MACE_SCF's convention)"] == 40
        e_dot_r = (np.repeat(b.read("external_field"), np.diff(b.atom_ptr), axis=0) * b.read("positions")).sum(1)
        assert np.abs(e_dot_r).max() > 0.1
        np.testing.assert_allclose((f.read("esps") - e_dot_r) * K_E / coulomb_constant(), x.read("esps"),
                                   rtol=0, atol=1e-6)  # measured 1.3e-8 V, charged clusters included


@pytest.mark.parametrize("settings, msg", [
    ({"preset": "mace_scf", "max_l": 2}, "up to l = 1"),
    ({"preset": "mace_scf", "boundary": "pbc"}, "own boundary handling"),
    ({"preset": "mace_scf", "kspace": 3.0}, "unknown key"),
    ({"preset": "mace"}, "Must be 'mace_scf'"),
    ({"kspace_cutoff": 4.0}, "preset: mace_scf only"),
])
def test_esps_preset_bad_settings_are_clear_errors(example_base, settings, msg, capsys):
    out = example_base.with_name("bad.h5")
    assert main(["derive", "esps", str(example_base), "--settings", json.dumps(settings), "-o", str(out)]) == 1
    assert msg in capsys.readouterr().err


def test_default_esps_note_the_external_field_they_leave_out(tmp_path, mace_scf_keys, water_fixture):
    keys = tmp_path / "keys.yaml"
    keys.write_text(json.dumps(mace_scf_keys))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(water_fixture), "--keys", str(keys), "-o", str(base)]) == 0
    out = derive_as(base, "default", "esps", {})
    with ScfdataFile(out) as f:
        note = ("configs with an external field (not in this ESP: that of the multipoles only; "
                "preset mace_scf adds +E·r)")
        assert f.provenance["notes"][note] == 40


@pytest.mark.parametrize("target", ["esps", "fields"])
def test_derived_target_never_silently_replaces_a_mapped_input(tmp_path, target, capsys):
    """MACE_SCF data may carry DFT ESPs (`electrostatic_potentials`): deriving them too is an error."""
    import ase.io

    frames = ase.io.read(REPO / "examples/data/water_clusters.extxyz", ":3")
    for a in frames:
        a.arrays["V_DFT"] = np.full(len(a), 123.0)
        a.arrays["E_DFT"] = np.full((len(a), 3), 1.0)
    ase.io.write(tmp_path / "f.extxyz", frames)
    keys = {"info_keys": {}, "arrays_keys": {"charges": "REF_charges", "esps": "V_DFT", "fields": "E_DFT"}}
    (tmp_path / "keys.yaml").write_text(json.dumps(keys))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(tmp_path / "f.extxyz"), "--keys", str(tmp_path / "keys.yaml"), "-o", str(base),
                 "--on-error", "reject"]) == 0
    assert main(["derive", target, str(base), "-o", str(tmp_path / "out.h5")]) == 1
    err = capsys.readouterr().err
    assert f"`{target}` is mapped from the input files" in err and f"reference.{target}: {{enabled: false}}" in err


# ------------------------------------------------------------------ provenance: masked vs notes; warnings
def test_provenance_separates_masked_configs_from_notes(example_base):
    out = derive(example_base, "dipoles")
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f:
        n_ttt = int(b.read("pbc").all(1).sum())
        prov = f.provenance
        assert n_ttt > 0 and prov["masked"] == {"pbc TTT (a dipole has no meaning in a 3D-periodic cell)": n_ttt}
        assert int((~f.mask("dipole_from_multipoles").any(1)).sum()) == n_ttt  # the count is what is masked
        # the dipole check masks nothing: a note
        assert prov["notes"]["configs with DFT and multipole dipoles"] > 0
        assert not set(prov["notes"]) & set(prov["masked"])
    with ScfdataFile(derive(example_base, "esps")) as f:
        assert f.provenance["masked"] == {} and f.mask("esps").all()


def test_charged_cell_warning_names_file_and_frame_once_per_config(tmp_path, caplog):
    import ase

    frames = [ase.Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 5.0, pbc=pbc)
              for pbc in (False, True, True)]
    charges = ([0.5, -0.5], [0.5, 0.2], [0.5, -0.5])  # frame 1: a net charge of 0.7 e in a periodic cell
    for a, q in zip(frames, charges):
        a.arrays["q"] = np.array(q)
    src = tmp_path / "charged.extxyz"
    import ase.io

    ase.io.write(src, frames)
    (tmp_path / "keys.yaml").write_text(json.dumps({"arrays_keys": {"charges": "q"}}))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(src), "--keys", str(tmp_path / "keys.yaml"), "-o", str(base)]) == 0
    for target in ("esps", "fields"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="scfdata.derive"):
            derive(base, target)
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert lines == [f"{src} frame 1: net charge 0.7 e in a periodic (TTT) cell: a uniform neutralising "
                         "background is added (zero cell-average potential)"], lines


def test_warm_up_compiles_the_open_boundary_numba_kernels():
    """Configs larger than AUTO_NUMPY_MAX_ATOMS run the compiled loop, so the warm-up job (with open
    clusters of that size + 1) compiles or loads it for the dataset's settings. In a fresh process, where
    nothing else imported numba."""
    import subprocess
    import sys

    code = ("import sys\nfrom scfdata.derive import warm_up_esp_kernels\n"
            "assert 'numba' not in sys.modules\n"
            "done = warm_up_esp_kernels('fields', [{'settings': {'boundary': 'realspace', 'smearing_width': 0.5},"
            " 'mapped': ['charges']}])\n"
            "from scfdata.reference import direct_sum_numba as d\n"
            "print(len(done), len(d._small_configs.signatures))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1"]  # one combination (open boundary), its kernel compiled or loaded
