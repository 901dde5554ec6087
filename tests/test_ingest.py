"""Ingest: canonical fields from real MACE_SCF files, weights, masks, and every bad-input case."""

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from scfdata.h5io import ScfdataFile, StreamWriter
from scfdata.ingest import IngestError, check_keys_found, ingest
from scfdata.keys import KeyMapping
from scfdata.validate import ValidationOptions


def run(tmp_path, frames_or_path, keys, on_error="reject", **opts):
    if isinstance(frames_or_path, list):
        path = tmp_path / "in.extxyz"
        ase.io.write(path, frames_or_path, format="extxyz")
    else:
        path = frames_or_path
    out = tmp_path / "out.h5"
    w = StreamWriter(out)
    try:
        res = ingest(w, [(0, path, 0, None)], KeyMapping.from_dict(keys), on_error=on_error,
                     options=ValidationOptions(**opts), block_size=7)
    except BaseException:
        w.abort()
        raise
    w.close()
    return res, out


def water(n=1, shift=(0, 0, 0)):
    a = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    out = Atoms()
    for k in range(n):
        b = a.copy()
        b.translate(np.array(shift) + [3.0 * k, 0, 0])
        out += b
    return out


def with_calc(a, energy=-1.0, forces=None, stress=None):
    kw = {"energy": energy, "forces": np.zeros((len(a), 3)) if forces is None else forces}
    if stress is not None:
        kw["stress"] = stress
    a.calc = SinglePointCalculator(a, **kw)
    return a


def test_real_mace_scf_file_multipole_order_reproduces_dft_dipole(tmp_path, water_fixture, mace_scf_keys):
    """Sum Q_i r_i + sum d_i with dipole columns [d_y, d_z, d_x] reproduces AIMS_dipole to the digit."""
    res, out = run(tmp_path, water_fixture, mace_scf_keys, on_error="raise")
    assert res.n_read == res.n_written == 40 and not res.rejects
    with ScfdataFile(out) as f:
        b = f.read_batch(np.arange(f.n_configs))
        mp, pos, batch = b["atomic_multipoles"], b["positions"], b["batch"]
        assert mp.shape[1] == 9
        mu = np.zeros((40, 3))
        np.add.at(mu, batch, mp[:, :1] * pos + mp[:, [3, 1, 2]])
        assert np.abs(mu - b["dipole"]).max() < 2e-7  # the file's last printed digit
        mu_q = np.zeros((40, 3))
        np.add.at(mu_q, batch, mp[:, :1] * pos)
        assert np.sqrt(((mu_q - b["dipole"]) ** 2).mean()) > 0.1  # charges alone miss
        assert b["dipole_mask"].all() and b["source"][:, 1].tolist() == list(range(40))


def test_calc_results_stress_voigt_and_weights(tmp_path):
    frames = []
    for k in range(5):
        a = with_calc(water(2), energy=-float(k), stress=np.arange(6.0) * (k + 1))
        a.info["config_energy_weight"] = 0.0 if k == 1 else 2.0
        a.info["config_weight"] = 3.0
        a.info["config_type"] = "w"
        a.info["DFT_dipole"] = [0.1, 0.2, 0.3]
        if k == 2:
            a.info["config_dipole_weight"] = [1, 0, 1]
        frames.append(a)
    keys = {"info_keys": {"energy": "energy", "stress": "stress", "dipole": "DFT_dipole"},
            "arrays_keys": {"forces": "forces"}}
    _, out = run(tmp_path, frames, keys, on_error="raise")
    with ScfdataFile(out) as f:
        s = f.read("stress")
        assert s.shape == (5, 3, 3)
        # ASE Voigt order xx yy zz yz xz xy
        assert s[0].tolist() == [[0, 5, 4], [5, 1, 3], [4, 3, 2]]
        assert f.read("energy").tolist() == [0, -1, -2, -3, -4]
        assert f.mask("energy").tolist() == [True, False, True, True, True]  # zero weight is not a target
        assert f.raw("configs", "energy_weight")[0] == 2.0 and f.raw("configs", "weight")[0] == 3.0
        assert f.mask("dipole")[2].tolist() == [True, False, True]
        assert f.raw("configs", "dipole_weight")[0].tolist() == [1, 1, 1]  # FFF default


def test_key_absent_from_some_frames_is_masked_not_zeroed(tmp_path):
    frames = [with_calc(water(1)) for _ in range(4)]
    frames[1].info["REF_Q"] = 0.0
    _, out = run(tmp_path, frames, {"info_keys": {"total_charge": "REF_Q"}}, on_error="raise")
    with ScfdataFile(out) as f:
        assert f.mask("total_charge").tolist() == [False, True, False, False]
        assert f.coverage("total_charge") == 1


def test_typo_key_is_error_with_did_you_mean(tmp_path):
    frames = [with_calc(water(1)) for _ in range(3)]
    for a in frames:
        a.info["DFT_energy"] = -1.0
    mapping = KeyMapping.from_dict({"info_keys": {"energy": "DFT_enrgy"}})
    res, _ = run(tmp_path, frames, mapping.as_dict())
    with pytest.raises(IngestError, match="did you mean 'DFT_energy'"):
        check_keys_found(res.coverage, res.keys_seen, mapping, "in.extxyz")


def test_charges_and_cartesian_dipoles_become_mace_scf_multipoles(tmp_path):
    a = water(1)
    q = np.array([-0.8, 0.4, 0.4])
    d = np.array([[0.1, 0.2, 0.3], [0.0, -0.1, 0.05], [0.2, 0.0, -0.3]])
    a.arrays["q"], a.arrays["p"] = q, d
    _, out = run(tmp_path, [a], {"arrays_keys": {"charges": "q", "atomic_dipoles": "p"}}, on_error="raise")
    with ScfdataFile(out) as f:
        mp = f.read("atomic_multipoles")
        np.testing.assert_allclose(mp[:, 0], q)
        np.testing.assert_allclose(mp[:, 1:4], d[:, [1, 2, 0]])  # [d_y, d_z, d_x]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.arrays.__setitem__("F", np.full((3, 3), np.nan)), "NaN"),
        (lambda a: a.arrays.__setitem__("M", np.zeros((3, 5))), r"square column count"),
        (lambda a: a.info.__setitem__("config_dipole_weight", [1, 1]), "expected 3 numbers"),
        (lambda a: a.arrays.__setitem__("M", np.c_[np.full(3, 0.5), np.zeros((3, 3))]), "sum to 1.5"),
        (lambda a: (a.set_pbc(True), a.set_cell(np.diag([30.0, 30.0, 0.3]))), r"0\.3 Å apart"),
        (lambda a: a.info.__setitem__("Q", True), r"'Q' \(total_charge\): expected numbers, found booleans"),
        (lambda a: a.info.__setitem__("config_weight", -1.0), r"expected weights >= 0"),
        (lambda a: a.info.__setitem__("config_forces_weight", np.nan), r"config_forces_weight.*NaN"),
        (lambda a: a.set_cell(np.full((3, 3), np.nan)), r"cell: NaN or infinite"),
        (lambda a: (a.set_pbc(True), a.set_cell([[0, 3, 0], [3, 0, 0], [0, 0, 3]])), "left-handed"),
        (lambda a: (a.set_pbc(True), a.set_cell(np.zeros((3, 3)))), "singular"),
        (lambda a: a.positions.__setitem__(1, a.positions[0] + [0.05, 0, 0]), "0.0500 Å apart"),
    ],
)
def test_bad_frames_rejected_with_reason_or_raised(tmp_path, mutate, match):
    frames = []
    for _ in range(3):
        a = water(1)
        a.arrays["F"] = np.zeros((3, 3))
        a.arrays["M"] = np.c_[np.array([-0.8, 0.4, 0.4]), np.zeros((3, 3))]
        a.info["Q"] = 0.0
        frames.append(a)
    mutate(frames[1])
    keys = {"info_keys": {"total_charge": "Q", "dipole": "Q3"},
            "arrays_keys": {"forces": "F", "atomic_multipoles": "M"}}
    for a in frames:
        a.info["Q3"] = [0.0, 0.0, 0.0]
    res, out = run(tmp_path, frames, keys)
    assert res.n_read == 3 and res.n_written == 2 and len(res.rejects) == 1
    file_index, frame, reason = res.rejects[0]
    assert frame == 1 and __import__("re").search(match, reason), reason
    with ScfdataFile(out) as f:
        assert f.n_configs == 2 and f.rejects()[0][1] == 1
        assert f.raw("configs", "source")[:, 1].tolist() == [0, 2]
    with pytest.raises(IngestError, match=r"frame 1: .*" + match):
        run(tmp_path, frames, keys, on_error="raise")


def test_renormalise_charges_option(tmp_path):
    a = water(1)
    a.arrays["q"] = np.array([-0.8, 0.45, 0.4])
    a.info["Q"] = 0.0
    _, out = run(tmp_path, [a], {"info_keys": {"total_charge": "Q"}, "arrays_keys": {"charges": "q"}},
                 on_error="raise", renormalise_charges=True)
    with ScfdataFile(out) as f:
        assert abs(f.read("charges").sum()) < 1e-12


def test_low_density_kept_with_a_note_by_default_and_rejected_on_request(tmp_path, caplog):
    a = water(1)
    a.pbc, a.cell = True, np.diag([30.0] * 3)
    res, _ = run(tmp_path, [a, water(1)], {}, on_error="raise")
    assert res.n_written == 2 and res.notes == {"low density": 1}
    warned = [r.getMessage() for r in caplog.records if "low density" in r.getMessage()]
    assert len(warned) == 1 and "in.extxyz: frame 0: low density: 9000.0 Å^3 per atom" in warned[0]
    res, _ = run(tmp_path, [a], {}, max_volume_per_atom=100.0)
    assert res.n_written == 0 and "9000.0 Å^3 per atom" in res.rejects[0][2]


def test_truncated_input_names_the_frame(tmp_path, water_fixture, mace_scf_keys):
    text = water_fixture.read_text()
    cut = tmp_path / "cut.xyz"
    cut.write_text(text[: int(len(text) * 0.3)])
    with pytest.raises(IngestError, match=r"truncated in frame \d+ \(starting at line \d+\)"):
        run(tmp_path, cut, mace_scf_keys)


def test_missing_input_file(tmp_path):
    with pytest.raises(IngestError, match="input file not found"):
        run(tmp_path, tmp_path / "nope.xyz", {})


def test_keys_from_mace_scf_config(tmp_path):
    cfg = tmp_path / "mace_scf.yaml"
    cfg.write_text(
        "heads:\n  aims:\n    info_keys: {energy: AIMS_energy, dipole: AIMS_dipole}\n"
        "    arrays_keys: {forces: AIMS_forces, density_coefficients: AIMS_atom_multipoles}\n"
        "train_schedule: []\n"
    )
    m = KeyMapping.from_mace_scf_config(cfg)
    assert m.arrays_keys == {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"}
    with pytest.raises(ValueError, match="did you mean 'energy'"):
        KeyMapping.from_dict({"info_keys": {"enrgy": "x"}})


@pytest.mark.parametrize("parser", ["auto", "ase"])
def test_charge_renormalisation_field(tmp_path, monkeypatch, parser):
    """Contract E: with renormalise_charges, /configs/charge_renormalisation = total_charge - sum q before the
    shift (0.0 where not shifted), masked where a config lacks charges or total_charge; absent otherwise."""
    import h5py

    from scfdata import fields

    monkeypatch.setitem(fields.FIELDS, "charge_renormalisation", fields.Field(
        "charge_renormalisation", "config", (), "float64", "e", "total_charge - sum of the input charges, "
        "removed by renormalise_charges (0: not shifted)", derived=True, target=False))
    q = [np.array([-0.8, 0.4, 0.4]), np.array([-0.5, 0.4, 0.4]), np.array([-0.8, 0.4, 0.1]), None]
    frames = []
    for k, charges in enumerate(q):
        a = water(shift=(0, 0, 5.0 * k))
        if charges is not None:
            a.arrays["q"] = charges
        if k != 2:
            a.info["Q"] = 0.0
        frames.append(a)
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames, format="extxyz")
    keys = KeyMapping.from_dict({"info_keys": {"total_charge": "Q"}, "arrays_keys": {"charges": "q"}})
    for renormalise in (True, False):
        out = tmp_path / f"{parser}-{renormalise}.h5"
        w = StreamWriter(out)
        ingest(w, [(0, path, 0, None)], keys, options=ValidationOptions(renormalise_charges=renormalise),
               parser=parser, on_error="reject")
        w.close()
        with h5py.File(out, "r") as h:
            if not renormalise:
                assert "charge_renormalisation" not in h["configs"]
                continue
            shift = h["configs/charge_renormalisation"][()]
            mask = h["masks/charge_renormalisation"][()]
            charges = h["atoms/charges"][()].reshape(4, 3)
            assert h["configs/charge_renormalisation"].attrs["unit"] == "e"
    assert shift.tolist() == pytest.approx([0.0, -0.3, 0.0, 0.0], abs=1e-15)
    assert mask.tolist() == [True, True, False, False]
    assert charges[1].sum() == pytest.approx(0.0, abs=1e-15)
    assert charges[1] - q[1] == pytest.approx(np.full(3, -0.1), abs=1e-15)
