"""`scfdata verify`: a sound file passes; each kind of damage is found, named and exits 1."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.h5io import ScfdataFile, assemble, write_columns
from scfdata.verify import published_set_problem, verify


def _cols(n=12, seed=0) -> Columns:
    rng = np.random.default_rng(seed)
    n_at = rng.integers(1, 5, n)
    n_mol = np.minimum(rng.integers(1, 3, n), n_at)
    N, M = int(n_at.sum()), int(n_mol.sum())
    return Columns(
        n_atoms=n_at, n_molecules=n_mol,
        configs={"energy": rng.normal(size=n), "weight": np.ones(n), "dipole": rng.normal(size=(n, 3)),
                 "pbc": np.zeros((n, 3), bool), "cell": np.zeros((n, 3, 3)), "config_type": np.array(["a"] * n)},
        atoms={"numbers": rng.integers(1, 9, N), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3)),
               "molecule": np.concatenate([np.arange(a) % m for a, m in zip(n_at, n_mol)])},
        molecules={"molecular_forces": rng.normal(size=(M, 3))},
        masks={"energy": np.ones(n, bool), "forces": np.ones(n, bool), "dipole": np.ones((n, 3), bool),
               "molecule": np.ones(n, bool)},
    )


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "d.h5"
    cols = _cols()
    write_columns(path, cols, rejects=[(0, 7, "energy: not finite")])
    return path, cols


def _problems(path) -> list[str]:
    return verify(path).problems


def test_a_sound_file_passes_with_every_array_checksummed(good, capsys):
    path, _ = good
    rep = verify(path)
    assert rep.ok and not rep.warnings, rep
    assert rep.checked == [f"{path}: 12 configs, {_cols().atom_ptr[-1]} atoms, 19 arrays, 19 checksums"]
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"scfdata verify: {path}: OK")


def test_a_changed_byte_is_found_by_its_checksum(good, capsys):
    path, _ = good
    with ScfdataFile(path) as f:
        offset = f._h5["atoms/forces"].id.get_offset()
    with open(path, "r+b") as fh:  # flip one bit of forces[0, 0]
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 1]))
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: /atoms/forces: checksum crc32:")
    assert "differs from the stored crc32:" in problems[0] and "rebuild it" in problems[0]
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"scfdata verify: 1 problem(s) in {path}"


def test_non_finite_values_count_only_where_the_mask_is_true(tmp_path):
    cols = _cols()
    cols.configs["energy"][3] = np.nan
    cols.masks["energy"][3] = False  # absent: its value does not matter
    cols.configs["dipole"][5, 1] = np.inf
    cols.masks["dipole"][5, 1] = False  # a masked component
    write_columns(tmp_path / "ok.h5", cols)
    assert _problems(tmp_path / "ok.h5") == []
    cols.masks["dipole"][5, 1] = True
    k = int(cols.atom_ptr[7])
    cols.atoms["forces"][k, 2] = np.nan  # atom k belongs to config 7
    write_columns(tmp_path / "bad.h5", cols)
    problems = _problems(tmp_path / "bad.h5")
    assert any(p.endswith("/configs/dipole: value inf at config 5: where its mask is True; rebuild the file from "
                          "its inputs") for p in problems), problems
    assert any(f"/atoms/forces: value nan at config 7 (atom {k})" in p for p in problems), problems
    assert len(problems) == 2


def test_weights_negative_positions_non_finite_and_molecule_ids_out_of_range(tmp_path):
    cols = _cols()
    cols.configs["weight"][2] = -1.0
    cols.atoms["positions"][0, 0] = np.nan  # no mask: every value counts
    cols.atoms["molecule"][int(cols.atom_ptr[4])] = 9
    write_columns(tmp_path / "w.h5", cols)
    problems = "\n".join(_problems(tmp_path / "w.h5"))
    assert "/configs/weight: value -1.0 at config 2: weights must be finite and >= 0" in problems
    assert "/atoms/positions: value nan at config 0 (atom 0): it has no mask, so every value counts" in problems
    assert "/atoms/molecule: id 9 at config 4" in problems


@pytest.mark.parametrize("damage, expected", [
    (lambda h5: _replace(h5, "configs/atom_ptr", lambda p: p[::-1].copy()),
     "/configs/atom_ptr: expected to start at 0"),
    (lambda h5: _replace(h5, "configs/molecule_ptr", lambda p: np.r_[p[:3], p[2] - 1, p[4:]]),
     "/configs/molecule_ptr: decreases at config 2"),
    (lambda h5: _replace(h5, "masks/energy", lambda m: m.astype(np.int8)), "/masks/energy: a mask must be boolean"),
    (lambda h5: _replace(h5, "masks/dipole", lambda m: m[:, 0].copy()), "/masks/dipole: shape (12,), expected (12, 3)"),
    (lambda h5: _replace(h5, "atoms/forces", lambda a: a[:-1].copy()), "/atoms/forces: first axis"),
    (lambda h5: h5["masks"].create_dataset("stress", data=np.ones(12, bool)),
     "/masks/stress: a mask without its field"),
    (lambda h5: h5["atoms/forces"].attrs.__delitem__("unit"), "/atoms/forces: attribute(s) unit missing"),
])
def test_structural_damage_is_named(good, damage, expected):
    path, _ = good
    with h5py.File(path, "r+") as h5:
        damage(h5)
    problems = _problems(path)
    assert any(expected in p for p in problems), problems


def _replace(h5, key, fn):
    data = fn(h5[key][()])
    attrs = dict(h5[key].attrs)
    del h5[key]
    h5.create_dataset(key, data=data)
    h5[key].attrs.update({k: v for k, v in attrs.items() if k != "checksum"})


def test_a_file_without_checksums_warns(good):
    path, _ = good
    with h5py.File(path, "r+") as h5:
        del h5["atoms/forces"].attrs["checksum"]
    rep = verify(path)
    assert rep.ok and rep.warnings == [f"{path}: 1 of 19 arrays carry no checksum (written by an older scfdata): "
                                       "their content cannot be checked"]


def _published(d, n_splits=2):
    d.mkdir()
    base = d.parent / f"{d.name}_base.h5"
    write_columns(base, _cols(20))
    files = {}
    for i, name in enumerate(("train", "valid", "test")[:n_splits]):
        assemble(d / f"{name}.h5", [[base]], [np.arange(i, 20, n_splits)],
                 root_attrs={"split_id": "abc", "split_name": name})
        files[name] = {"n_configs": len(range(i, 20, n_splits)), "bytes": (d / f"{name}.h5").stat().st_size}
    (d / "manifest.json").write_text(json.dumps({"split_id": "abc", "splits": files}))
    return d


def test_a_results_directory_checks_its_published_set(tmp_path):
    d = _published(tmp_path / "r")
    assert verify(d).ok and published_set_problem(d) is None
    # a stale split file of an earlier run
    assemble(d / "test.h5", [[tmp_path / "r_base.h5"]], root_attrs={"split_id": "old", "split_name": "test"})
    assert published_set_problem(d) is None  # readers refuse it; nothing to rebuild
    assert any("test.h5: not listed in" in p for p in _problems(d))
    (d / "test.h5").unlink()
    # a truncated split file: both checks see it
    with open(d / "valid.h5", "r+b") as fh:
        fh.truncate(3000)
    assert "valid.h5: 3000 bytes, manifest.json says" in published_set_problem(d)
    assert any("valid.h5" in p for p in _problems(d))
    (d / "valid.h5").unlink()
    assert published_set_problem(d).endswith("valid.h5: listed in " + str(d / "manifest.json") + " but missing")
    assert any("listed in" in p and "but missing" in p for p in _problems(d))


def test_a_directory_without_manifest_is_not_a_published_set(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    assert published_set_problem(d) is None
    assert _problems(d) == [f"{d}: no manifest.json: no set was published completely here (a run stopped, or this "
                            "is not a results directory); rerun the workflow"]
