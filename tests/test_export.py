"""`scfdata export`: extxyz round trips through ingest, and MACE's HDF5 layout checked value by value."""

import json
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms

from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.export import MACE_NONE_OK
from scfdata.h5io import ScfdataFile, assemble, read_columns, write_columns

DATA = Path(__file__).parent / "data"  # (not imported from conftest: tests/losses has one too)
#: The key mapping of the MACE_SCF water clusters (as tests/conftest.py's `mace_scf_keys`).
MACE_SCF_KEYS = {
    "info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole", "total_charge": "total_charge",
                  "fermi_level": "the_fermi_level", "external_field": "the_external_field"},
    "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"},
}

MIXED_KEYS = {
    "info_keys": {"energy": "E_dft", "stress": "S_dft", "dipole": "D_dft", "total_charge": "Q",
                  "fermi_level": "mu", "polarizability": "alpha"},
    "arrays_keys": {"forces": "F_dft", "charges": "q_dft"},
}


def _mixed_frames(rng) -> list[Atoms]:
    """Small frames exercising absent keys, zero weights, config weights and every boundary class."""
    frames = []
    for k, pbc in enumerate([(False,) * 3, (True, True, False), (True,) * 3, (False,) * 3, (True,) * 3]):
        n = 3 + k
        a = Atoms(numbers=rng.choice([1, 8, 11, 17], n), positions=rng.uniform(0, 4, (n, 3)),
                  cell=np.diag([6.0, 7.0, 8.0]) if any(pbc) or k == 3 else None, pbc=pbc)
        a.arrays["F_dft"] = rng.normal(size=(n, 3))
        q = rng.normal(size=n)
        a.arrays["q_dft"] = q - q.mean() + (1.0 if k == 1 else 0.0) / n
        a.info["Q"] = 1.0 if k == 1 else 0.0
        if k != 2:
            a.info["E_dft"] = float(rng.normal(-100, 5))
        if any(pbc):
            a.info["S_dft"] = rng.normal(size=(3, 3)) * 1e-3
        a.info["D_dft"] = rng.normal(size=3)
        if k == 1:
            a.info["config_dipole_weight"] = np.array([0.0, 0.0, 1.0])
        if k == 3:
            a.info["config_energy_weight"] = 0.0  # present but switched off
            a.info["config_weight"] = 2.5
            a.info["mu"] = -4.25
            a.info["alpha"] = rng.normal(size=(3, 3))
        a.info["config_type"] = f"type_{k % 2}"
        frames.append(a)
    return frames


def _ingest(path, keys, out):
    kf = out.with_suffix(".keys.yaml")
    kf.write_text(json.dumps(keys))
    assert main(["ingest", str(path), "--keys", str(kf), "-o", str(out)]) == 0
    return out


def assert_same_file(a, b, skip=()):
    """Every stored array of ``a`` is in ``b`` with identical values (and masks)."""
    ca, _ = read_columns(a)
    cb, _ = read_columns(b)
    np.testing.assert_array_equal(ca.n_atoms, cb.n_atoms)
    for group in ("configs", "atoms", "masks"):
        da, db = getattr(ca, group), getattr(cb, group)
        for name, arr in da.items():
            if name in skip or name == "source":
                continue
            assert name in db, f"{group}/{name} lost in the round trip"
            np.testing.assert_array_equal(np.asarray(arr), np.asarray(db[name]).astype(np.asarray(arr).dtype),
                                          err_msg=f"{group}/{name}")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    ase.io.write(d / "in.xyz", _mixed_frames(np.random.default_rng(1)), format="extxyz")
    return _ingest(d / "in.xyz", MIXED_KEYS, d / "base.h5")


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """The real MACE_SCF water clusters with esps, fields and a molecule fragment (one masked config)."""
    d = tmp_path_factory.mktemp("water")
    base = _ingest(DATA / "mace_scf_water_clusters_40.xyz", MACE_SCF_KEYS, d / "base.h5")
    for t in ("esps", "fields"):
        assert main(["derive", t, str(base), "-o", str(d / f"{t}.h5")]) == 0
    cols, _ = read_columns(base)
    mol = np.concatenate([np.arange(k) // 3 for k in cols.n_atoms])
    n_mol = (cols.n_atoms + 2) // 3
    mask = np.ones(cols.n_configs, dtype=bool)
    mask[2] = False  # a 23-atom config: its (meaningless) indices are stored, masked off
    write_columns(d / "mol.h5", Columns(n_atoms=cols.n_atoms, n_molecules=n_mol, atoms={"molecule": mol},
                                        masks={"molecule": mask}))
    return assemble(d / "train.h5", [[base, d / "esps.h5", d / "fields.h5", d / "mol.h5"]])


# ------------------------------------------------------------------------------------------------
# extxyz
# ------------------------------------------------------------------------------------------------


def test_extxyz_round_trip_inputs_identical(mixed, tmp_path):
    out = tmp_path / "out.xyz"
    assert main(["export", str(mixed), "--format", "extxyz", "-o", str(out), "--keys-out",
                 str(tmp_path / "heads.yaml")]) == 0
    assert main(["ingest", str(out), "--keys-from", str(tmp_path / "heads.yaml"), "-o",
                 str(tmp_path / "again.h5")]) == 0
    assert_same_file(mixed, tmp_path / "again.h5")
    with ScfdataFile(tmp_path / "again.h5") as f:  # the switched-off energy stays off, the absent one absent
        assert f.mask("energy").tolist() == [True, True, False, False, True]
        assert f.read("energy")[3] != 0 and f.read("energy")[2] == 0
        assert f.read("weight")[3] == 2.5


def test_extxyz_round_trip_derived_fields_and_masks(water, tmp_path):
    out = tmp_path / "out.xyz"
    assert main(["export", str(water), "--format", "extxyz", "-o", str(out), "--keys-out",
                 str(tmp_path / "heads.yaml"), "--names", "esps=V_ref,molID=mol_id", "--chunk-size", "7"]) == 0
    assert main(["ingest", str(out), "--keys-from", str(tmp_path / "heads.yaml"), "-o",
                 str(tmp_path / "again.h5")]) == 0
    assert_same_file(water, tmp_path / "again.h5")
    with ScfdataFile(tmp_path / "again.h5") as f:
        assert not f.mask("molecule")[2] and f.mask("molecule").sum() == 39


def test_extxyz_readable_by_ase_with_mace_scf_keys(water, tmp_path):
    out = tmp_path / "out.xyz"
    assert main(["export", str(water), "--format", "extxyz", "-o", str(out)]) == 0
    frames = ase.io.read(out, ":")
    with ScfdataFile(water) as f:
        assert len(frames) == f.n_configs
        ptr = f.atom_ptr
        for i in (0, 3, 39):
            a, s = frames[i], slice(ptr[i], ptr[i + 1])
            assert a.calc is None  # nothing moved into calc.results: MACE reads info/arrays
            assert a.info["REF_energy"] == f.read("energy")[i]
            np.testing.assert_array_equal(a.arrays["REF_electrostatic_potentials"], f.read("esps")[s])
            np.testing.assert_array_equal(a.arrays["REF_atomic_multipoles"], f.read("atomic_multipoles")[s])
            np.testing.assert_array_equal(a.positions, f.read("positions")[s])
            np.testing.assert_array_equal(a.info["config_dipole_weight"], [1.0, 1.0, 1.0])
        assert frames[2].info["config_molID_weight"] == 0.0
        assert frames[2].info["config_molecule_weight"] == 0.0


@pytest.mark.parametrize("names, match", [("energy=energy", "reserved by ASE"), ("bogus=x", "unknown field"),
                                          ("esps", "NAME=KEY"), ("esps=a,fields=a", "more than one")])
def test_bad_names_are_one_line_errors(water, tmp_path, capsys, names, match):
    assert main(["export", str(water), "--format", "extxyz", "-o", str(tmp_path / "x.xyz"), "--names", names]) == 1
    assert match in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# MACE layout
# ------------------------------------------------------------------------------------------------


def _decode(v):
    v = v[()]
    return v.decode() if isinstance(v, bytes) else v


def check_mace_file(src, paths, mace_names, head="Default"):
    """Every value of the MACE files against the scfdata source, config by config."""
    cols, _ = read_columns(src)
    aptr = cols.atom_ptr
    j_global = 0
    for path in paths:
        with h5py.File(path, "r") as h5:
            assert list(h5) == ["config_batch_0"] and h5.attrs["drop_last"] == 0
            batch = h5["config_batch_0"]
            for j in range(len(batch)):
                i, g = j_global, batch[f"config_{j}"]
                s = slice(aptr[i], aptr[i + 1])
                np.testing.assert_array_equal(g["atomic_numbers"][()], cols.atoms["numbers"][s])
                np.testing.assert_array_equal(g["positions"][()], cols.atoms["positions"][s])
                np.testing.assert_array_equal(g["cell"][()], cols.configs["cell"][i])
                np.testing.assert_array_equal(g["pbc"][()], cols.configs["pbc"][i])
                assert g["weight"].shape == () and g["weight"][()] == cols.configs["weight"][i]
                assert _decode(g["config_type"]) == cols.configs["config_type"][i]
                assert _decode(g["head"]) == head
                # what the source holds, plus every property MACE reads itself, absent: "None", weight 0
                absent = MACE_NONE_OK - set(mace_names.values())
                assert set(g["properties"]) == set(g["property_weights"]) == set(mace_names.values()) | absent
                for key in absent:
                    assert _decode(g["properties"][key]) == "None", key
                    assert g["property_weights"][key][()] == 0.0, key
                for name, key in mace_names.items():
                    mask = np.asarray(cols.masks[name][i])
                    w_src = cols.configs.get(f"{name}_weight")
                    w = (w_src[i] if w_src is not None else np.ones(mask.shape)) * mask
                    np.testing.assert_array_equal(g["property_weights"][key][()], w, err_msg=key)
                    v = g["properties"][key]
                    if not mask.any() and key in MACE_NONE_OK:
                        assert _decode(v) == "None", key
                        continue
                    level = "atom" if name in cols.atoms else "config"
                    ref = cols.atoms[name][s] if level == "atom" else cols.configs[name][i]
                    np.testing.assert_array_equal(v[()], ref, err_msg=key)
                j_global += 1
    assert j_global == cols.n_configs


def test_mace_layout_every_value(water, tmp_path):
    out = tmp_path / "mace"
    assert main(["export", str(water), "--format", "mace", "-o", str(out), "--chunk-size", "16"]) == 0
    names = {"energy": "energy", "forces": "forces", "total_charge": "total_charge", "dipole": "dipole",
             "atomic_multipoles": "atomic_multipoles", "fermi_level": "fermi_level",
             "external_field": "external_field", "esps": "electrostatic_potentials", "fields": "fields",
             "molecule": "molID"}
    check_mace_file(water, [out / "train" / "train_0.h5"], names)
    with h5py.File(out / "train" / "train_0.h5") as h5:  # the masked molecule config: weight 0, and
        g = h5["config_batch_0/config_2"]  # stored values (not "None": MACE could not batch a missing key)
        assert g["properties/molID"].shape == (23,) and g["property_weights/molID"][()] == 0.0


def test_mace_layout_weights_absent_and_sharded(mixed, tmp_path):
    split = tmp_path / "valid.h5"
    split.write_bytes(mixed.read_bytes())
    out = tmp_path / "mace"
    assert main(["export", str(split), "--format", "mace", "-o", str(out), "--n-shards", "3"]) == 0
    files = [out / "val" / f"val_{k}.h5" for k in range(3)]
    names = {n: n for n in ("energy", "forces", "stress", "total_charge", "charges", "dipole",
                            "polarizability", "fermi_level")}
    check_mace_file(split, files, names)
    assert not (out / "statistics.json").exists()  # statistics only for the train split
    with h5py.File(files[1]) as h5:  # config 2 (no energy) is the first of shard 1
        assert _decode(h5["config_batch_0/config_0/properties/energy"]) == "None"
        assert h5["config_batch_0/config_0/property_weights/energy"][()] == 0.0
    # one shard alone writes only its own file, with the same bytes as the full run's
    assert main(["export", str(split), "--format", "mace", "-o", str(tmp_path / "one"), "--n-shards", "3",
                 "--shard", "2"]) == 0
    assert [p.name for p in (tmp_path / "one" / "val").iterdir()] == ["val_2.h5"]
    check_mace_file_subset = read_columns(split, np.arange(4, 5))[0]
    with h5py.File(tmp_path / "one" / "val" / "val_2.h5") as h5:
        np.testing.assert_array_equal(h5["config_batch_0/config_0/positions"][()],
                                      check_mace_file_subset.atoms["positions"])


def test_statistics_are_plain_json_numbers_and_least_squares(water, tmp_path):
    out = tmp_path / "mace"
    assert main(["export", str(water), "--format", "mace", "-o", str(out), "--r-max", "3.0"]) == 0
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["atomic_numbers"] == [1, 8]
    assert all(isinstance(v, float) for v in stats["atomic_energies"].values())
    assert isinstance(stats["mean"], float) and isinstance(stats["std"], float)
    assert isinstance(stats["avg_num_neighbors"], float) and stats["r_max"] == 3.0
    with ScfdataFile(water) as f:
        e, z, ptr = f.read("energy"), f.read("numbers"), f.atom_ptr
        counts = np.stack([np.add.reduceat((z == k).astype(float), ptr[:-1]) for k in (1, 8)], axis=1)
        pos = f.read("positions")
    e0 = np.array([stats["atomic_energies"]["1"], stats["atomic_energies"]["8"]])
    # least-squares optimality: the residual is orthogonal to the composition columns
    resid = e - counts @ e0
    assert np.abs(counts.T @ resid).max() < 1e-6 * np.abs(counts.T @ e).max()
    np.testing.assert_allclose(stats["mean"], np.mean(resid / np.diff(ptr)), rtol=1e-10, atol=1e-12)
    # neighbours within 3 Å by a direct distance count (open clusters)
    n_nb = sum(((np.linalg.norm(pos[a:b, None] - pos[None, a:b], axis=-1) < 3.0).sum() - (b - a))
               for a, b in zip(ptr[:-1], ptr[1:], strict=True))
    np.testing.assert_allclose(stats["avg_num_neighbors"], n_nb / ptr[-1], rtol=1e-12)
    mace = json.loads((out / "statistics_mace.json").read_text())
    assert isinstance(mace["atomic_energies"], str) and mace["atomic_numbers"] == "[1, 8]"


def test_energy_statistics_lists_elements_without_energy():
    from scfdata.export import energy_statistics

    numbers = np.array([1, 1, 8, 8, 8, 1, 1, 11, 17])  # H2, O2, H2O with energies; NaCl without
    atom_ptr = np.array([0, 2, 4, 7, 9])
    e = np.array([2 * -13.6, 2 * -430.0, 2 * -13.6 - 430.0, np.nan])
    out = energy_statistics(e, numbers, atom_ptr, np.array([True, True, True, False]))
    assert out["elements_without_energy"] == [11, 17]
    assert out["atomic_energies"]["1"] == pytest.approx(-13.6) and out["atomic_energies"]["8"] == pytest.approx(-430.0)
    assert out["atomic_energies"]["11"] == 0.0 and out["std"] == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------
# empty and odd input: one line, exit 1, nothing written
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty(mixed, tmp_path_factory):
    """A train split file that holds no config (every field declared, 0 rows)."""
    cols, _ = read_columns(mixed, np.arange(0))
    return write_columns(tmp_path_factory.mktemp("empty") / "train.h5", cols)


@pytest.mark.parametrize("case,expected", [
    ("empty-mace", "holds 0 configs, nothing to export"),
    ("empty-extxyz", "holds 0 configs, nothing to export"),
    ("output-is-input", "is the input file"),
    ("mace-into-a-file", "is a file; --format mace writes a directory"),
    ("extxyz-into-a-directory", "is a directory; --format extxyz writes one file"),
    ("keys-out-a-directory", "--keys-out"),
    ("chunk-size-0", "--chunk-size must be >= 1, got 0"),
    ("n-shards-0", "--n-shards must be >= 1, got 0"),
    ("shard-out-of-range", "--shard must be in 0..1, got 2"),
    ("extxyz-many-shards", "extxyz writes one file"),
    ("input-a-directory", "is a directory, not an scfdata file"),
    ("input-not-hdf5", "not a readable HDF5 file"),
    ("input-missing", "no such file"),
])
def test_export_refuses_empty_and_odd_input_in_one_line(case, expected, mixed, empty, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    src, fmt, extra = str(mixed), "mace", ["-o", str(tmp_path / "out")]
    if case.startswith("empty"):
        src, fmt = str(empty), case.split("-")[1]
        extra = ["-o", str(tmp_path / ("out.xyz" if fmt == "extxyz" else "out"))]
    elif case == "output-is-input":
        fmt, extra = "extxyz", ["-o", src]
    elif case == "mace-into-a-file":
        extra = ["-o", str(tmp_path / "a_file")]
    elif case == "extxyz-into-a-directory":
        fmt, extra = "extxyz", ["-o", str(tmp_path / "a_dir")]
    elif case == "keys-out-a-directory":
        fmt, extra = "extxyz", ["-o", str(tmp_path / "o.xyz"), "--keys-out", str(tmp_path / "a_dir")]
    elif case == "chunk-size-0":
        extra += ["--chunk-size", "0"]
    elif case == "n-shards-0":
        extra += ["--n-shards", "0"]
    elif case == "shard-out-of-range":
        extra += ["--n-shards", "2", "--shard", "2"]
    elif case == "extxyz-many-shards":
        fmt, extra = "extxyz", ["-o", str(tmp_path / "o.xyz"), "--n-shards", "2"]
    elif case == "input-a-directory":
        src = str(tmp_path / "a_dir")
    elif case == "input-not-hdf5":
        src = str(tmp_path / "a_file")
    elif case == "input-missing":
        src = str(tmp_path / "nothing.h5")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", src, "--format", fmt, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("scfdata export: error: ") and "\n" not in err and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (tmp_path / "a_file").read_text() == "x"


def test_more_shards_than_configs_writes_only_the_shards_with_configs(mixed, tmp_path):
    split = tmp_path / "test.h5"
    split.write_bytes(mixed.read_bytes())  # 5 configs
    out = tmp_path / "mace"
    (out / "test").mkdir(parents=True)
    (out / "test" / "test_6.h5").write_text("left by an earlier run with more configs")
    assert main(["export", str(split), "--format", "mace", "-o", str(out), "--n-shards", "7"]) == 0
    assert sorted(p.name for p in (out / "test").iterdir()) == [f"test_{k}.h5" for k in range(5)]
    check_mace_file(split, [out / "test" / f"test_{k}.h5" for k in range(5)],
                    {n: n for n in ("energy", "forces", "stress", "total_charge", "charges", "dipole",
                                    "polarizability", "fermi_level")})


def test_mace_statistics_name_undetermined_e0_and_take_supplied_ones(water, tmp_path, caplog):
    """Water clusters only: H and O always 2:1, so MACE's E0 least squares (no rank check) would be
    silently arbitrary; the export names them, and supplied E0s fix them."""
    with ScfdataFile(water) as f:
        z, ptr = f.read("numbers"), f.atom_ptr
    n_h = np.add.reduceat((z == 1).astype(float), ptr[:-1])
    n_o = np.add.reduceat((z == 8).astype(float), ptr[:-1])
    neutral = np.flatnonzero(n_h == 2 * n_o)
    assert len(neutral) >= 5
    cols, _ = read_columns(water, neutral)
    src = write_columns(tmp_path / "train.h5", cols)
    with caplog.at_level("WARNING"):
        assert main(["export", str(src), "--format", "mace", "-o", str(tmp_path / "a"), "--r-max", "3.0"]) == 0
    stats = json.loads((tmp_path / "a" / "statistics.json").read_text())
    assert stats["e0"]["undetermined_elements"] == ["H", "O"] and stats["e0"]["rank"] == 1
    assert len(stats["warnings"]) == 1 and "E0 of H, O is not determined" in stats["warnings"][0]
    assert any("E0 of H, O is not determined" in r.getMessage() for r in caplog.records)
    assert main(["export", str(src), "--format", "mace", "-o", str(tmp_path / "b"), "--r-max", "3.0",
                 "--e0", '{"H": -13.6}']) == 0
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    assert stats["warnings"] == [] and stats["atomic_energies"]["1"] == -13.6
    e = cols.configs["energy"]
    e_o = np.linalg.lstsq(n_o[neutral, None], e - n_h[neutral] * -13.6, rcond=None)[0][0]
    assert stats["atomic_energies"]["8"] == pytest.approx(e_o, rel=1e-12)
    mace = json.loads((tmp_path / "b" / "statistics_mace.json").read_text())
    assert mace["atomic_energies"] == str({1: -13.6, 8: stats["atomic_energies"]["8"]})
