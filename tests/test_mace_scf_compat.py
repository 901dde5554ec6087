"""Real MACE_SCF data files ingest unchanged through `keys_from:` a MACE_SCF training config.

The values are checked against the files as ASE reads them (an independent path), for the water
clusters and for MACE_SCF's own bulk (TTT) / slab (TTF) / mixed test configs.
"""

import json
from pathlib import Path

import ase.io
import numpy as np
import yaml

from scfdata.cli import main
from scfdata.h5io import ScfdataFile
from scfdata.keys import KeyMapping

DATA = Path(__file__).parent / "data"  # (not imported from conftest: tests/losses has one too)

#: A MACE_SCF config for the bulk/slab/mixed fixtures (as in MACE_SCF's docs: heads + train_schedule).
FIXTURE_CONFIG = {
    "heads": {
        "pbe": {
            "info_keys": {"total_charge": "total_charge", "fermi_level": "the_VBM",
                          "external_field": "an_applied_field"},
            "arrays_keys": {"atomic_multipoles": "some_multipoles", "charges": "formal_oxidation_states"},
        }
    },
    "train_schedule": {
        0: {"name": "stage1", "start": 0, "end": 99, "lr": 0.01,
            "loss": {"atomic_multipoles": 100.0, "total_charge": 1.0, "fermi_level": 1.0}},
        1: {"name": "stage2", "start": 100, "end": 199, "lr": 0.001,
            "loss": {"atomic_multipoles": 10.0, "fermi_level": 10.0}},
    },
}

WATER_CONFIG = {
    "heads": {
        "revPBEd3": {
            "info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole", "total_charge": "total_charge",
                          "fermi_level": "the_fermi_level", "external_field": "the_external_field"},
            "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"},
        }
    },
    "train_schedule": {0: {"name": "stage1", "start": 0, "end": 9,
                           "loss": {"energy_per_atom": 1.0, "forces": 100.0, "dipole_per_atom": 1.0,
                                    "atomic_multipoles": 100.0}, "lr": 0.01}},
}

#: MACE_SCF's fixtures hold deliberately sparse TTT boxes; MACE_SCF loads them with
#: --allow_low_density_pbc, scfdata with the matching validation switch.
ALLOW_LOW_DENSITY = json.dumps({"validation": {"max_volume_per_atom": None}})


def _ingest(tmp_path, config, xyz, settings=None):
    cfg = tmp_path / "mace_scf_config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / f"{xyz.stem}.h5"
    argv = ["ingest", str(xyz), "--keys-from", str(cfg), "-o", str(out)]
    if settings:
        argv += ["--settings", settings]
    assert main(argv) == 0
    return out


def test_water_clusters_values_unchanged(tmp_path, water_fixture):
    out = _ingest(tmp_path, WATER_CONFIG, water_fixture)
    frames = ase.io.read(water_fixture, ":")
    with ScfdataFile(out) as f:
        assert f.n_configs == len(frames)
        ptr = f.atom_ptr
        for i, a in enumerate(frames):
            s = slice(ptr[i], ptr[i + 1])
            np.testing.assert_array_equal(f.read("numbers")[s], a.numbers)
            np.testing.assert_array_equal(f.read("positions")[s], a.positions)
            np.testing.assert_array_equal(f.read("forces")[s], a.arrays["AIMS_forces"])
            np.testing.assert_array_equal(f.read("atomic_multipoles")[s], a.arrays["AIMS_atom_multipoles"])
            assert f.read("energy")[i] == a.info["AIMS_energy"]
            np.testing.assert_array_equal(f.read("dipole")[i], a.info["AIMS_dipole"])
            np.testing.assert_array_equal(f.read("dipole_weight")[i], a.info["config_dipole_weight"])
            np.testing.assert_array_equal(f.read("external_field")[i], a.info["the_external_field"])
            assert f.read("fermi_level")[i] == a.info["the_fermi_level"]
            assert f.read("total_charge")[i] == a.info["total_charge"]
            assert f.read("config_type")[i] == a.info["config_type"]


def test_bulk_slab_mixed_fixtures_values_unchanged(tmp_path):
    """One MACE_SCF config for the three fixture files ingested as one dataset (the bulk file alone has
    no `an_applied_field`: it is masked there, present in the slab frames)."""
    names = ["bulk", "slab", "mixed"]
    xyz = [DATA / f"mace_scf_{n}_test_configs.xyz" for n in names]
    cfg = tmp_path / "mace_scf_config.yaml"
    cfg.write_text(yaml.safe_dump(FIXTURE_CONFIG, sort_keys=False))
    out = tmp_path / "fixtures.h5"
    assert main(["ingest", *map(str, xyz), "--keys-from", str(cfg), "-o", str(out),
                 "--settings", ALLOW_LOW_DENSITY]) == 0
    frames = [ase.io.read(p, ":") for p in xyz]
    with ScfdataFile(out) as f:
        assert f.n_configs == sum(map(len, frames)) and not f.rejects()
        assert {tuple(p) for p in f.read("pbc").tolist()} == {(False,) * 3, (True, True, False), (True,) * 3}
        ptr = f.atom_ptr
        for i, (k, j) in enumerate(f.read("source")):
            a, s = frames[k][j], slice(ptr[i], ptr[i + 1])
            np.testing.assert_array_equal(f.read("pbc")[i], a.pbc)
            np.testing.assert_array_equal(f.read("cell")[i], a.cell.array)
            np.testing.assert_array_equal(f.read("positions")[s], a.positions)
            np.testing.assert_array_equal(f.read("atomic_multipoles")[s], a.arrays["some_multipoles"])
            np.testing.assert_array_equal(f.read("charges")[s], a.arrays["formal_oxidation_states"])
            assert f.read("total_charge")[i] == a.info["total_charge"]
            assert f.read("fermi_level")[i] == a.info["the_VBM"]
            assert f.mask("external_field")[i] == ("an_applied_field" in a.info)
            if "an_applied_field" in a.info:
                np.testing.assert_array_equal(f.read("external_field")[i], a.info["an_applied_field"])
        assert f.mask("external_field").sum() == sum("an_applied_field" in a.info for fr in frames for a in fr) > 0


def test_sparse_periodic_fixture_kept_by_default_and_refused_with_the_switch(tmp_path, capsys):
    """MACE_SCF's bulk configs (205 and 259 Å^3 per atom) are legitimate data: kept by default with a
    warning; `max_volume_per_atom` (opt-in) makes them rejects and names the switch."""
    cfg = dict(FIXTURE_CONFIG, heads={"pbe": {
        "info_keys": {k: v for k, v in FIXTURE_CONFIG["heads"]["pbe"]["info_keys"].items() if k != "external_field"},
        "arrays_keys": FIXTURE_CONFIG["heads"]["pbe"]["arrays_keys"]}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    src = str(DATA / "mace_scf_bulk_test_configs.xyz")
    assert main(["ingest", src, "--keys-from", str(path), "-o", str(tmp_path / "x.h5")]) == 0
    with ScfdataFile(tmp_path / "x.h5") as f:
        assert f.n_configs == 2
    capsys.readouterr()
    settings = '{"validation": {"max_volume_per_atom": 100.0}, "on_error": "raise"}'
    assert main(["ingest", src, "--keys-from", str(path), "--settings", settings,
                 "-o", str(tmp_path / "y.h5")]) == 1
    assert "max_volume_per_atom" in capsys.readouterr().err


def test_keys_from_reads_first_head_and_ignores_train_schedule(tmp_path):
    cfg = tmp_path / "c.yaml"
    two_heads = {"heads": {**FIXTURE_CONFIG["heads"], "other": {"info_keys": {"energy": "E"}}},
                 "train_schedule": FIXTURE_CONFIG["train_schedule"]}
    cfg.write_text(yaml.safe_dump(two_heads, sort_keys=False))
    m = KeyMapping.from_mace_scf_config(cfg)
    assert m.info_keys == {"total_charge": "total_charge", "fermi_level": "the_VBM",
                           "external_field": "an_applied_field"}
    assert m.arrays_keys == {"atomic_multipoles": "some_multipoles", "charges": "formal_oxidation_states"}


def test_mace_scf_model_specific_keys_do_not_block_keys_from(tmp_path):
    cfg = tmp_path / "c.yaml"
    conf = {"heads": {"pbe": {"info_keys": {"energy": "AIMS_energy"},
                              "arrays_keys": {"forces": "AIMS_forces", "enegs": "chi", "hardness": "eta"}}}}
    cfg.write_text(yaml.safe_dump(conf))
    m = KeyMapping.from_mace_scf_config(cfg)
    assert m.info_keys == {"energy": "AIMS_energy"}


def test_mace_style_key_options_are_read(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("atomic_multipoles_key: some_multipoles\nfermi_level_key: the_VBM\n")
    m = KeyMapping.from_mace_scf_config(cfg)
    assert m.arrays_keys == {"atomic_multipoles": "some_multipoles"}
