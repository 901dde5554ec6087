import json
import warnings

import numpy as np
import pytest

from scfdata.statistics import UnderdeterminedWarning, finalize, merge, shard_sums


def _dataset(n_cfg=60, seed=0):
    """Configs of H, C, O with random compositions; E = sum_Z n_Z E0_Z + noise * N."""
    rng = np.random.default_rng(seed)
    e0 = {1: -13.6, 6: -1029.0, 8: -2041.0}
    counts = rng.integers(1, 8, size=n_cfg)
    numbers = rng.choice([1, 6, 8], size=counts.sum())
    ptr = np.concatenate([[0], np.cumsum(counts)])
    cfg = np.repeat(np.arange(n_cfg), counts)
    energy = np.bincount(cfg, weights=np.vectorize(e0.get)(numbers), minlength=n_cfg)
    energy += rng.normal(0, 0.05, n_cfg) * counts
    forces = rng.normal(0, 0.7, (len(numbers), 3))
    esps = rng.normal(0.3, 2.0, len(numbers))
    dipole = rng.normal(0, 1.0, (n_cfg, 3))
    dmask = rng.random((n_cfg, 3)) > 0.3
    return numbers, ptr, energy, forces, esps, dipole, dmask


def _sums(numbers, ptr, energy, forces, esps, dipole, dmask, rows):
    rows = np.asarray(rows)
    counts = np.diff(ptr)[rows]
    a_idx = np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in rows]) if len(rows) else np.zeros(0, int)
    sub_ptr = np.concatenate([[0], np.cumsum(counts)])
    ones = np.ones(len(a_idx), bool)
    return shard_sums(numbers[a_idx], sub_ptr, energy=(energy[rows], np.ones(len(rows), bool)),
                      atom_targets={"forces": (forces[a_idx], ones), "esps": (esps[a_idx], ones)},
                      entry_targets={"dipole": (dipole[rows], dmask[rows])})


def test_merged_shards_equal_one_pass_and_direct_numbers():
    data = _dataset()
    numbers, ptr, energy, forces, esps, dipole, dmask = data
    n = len(energy)
    whole = finalize(merge([_sums(*data, np.arange(n))]))
    parts = [_sums(*data, r) for r in np.split(np.arange(n), [7, 7, 31])]  # one empty shard
    sharded = finalize(merge(parts))
    # exact merge (to rounding), independent of sharding
    assert sharded["atomic_energies"].keys() == whole["atomic_energies"].keys()
    for k in whole["atomic_energies"]:
        assert sharded["atomic_energies"][k] == pytest.approx(whole["atomic_energies"][k], rel=1e-9)
    for key in ("mean", "std"):
        assert sharded["energy_per_atom"][key] == pytest.approx(whole["energy_per_atom"][key], rel=1e-7, abs=1e-12)
        assert sharded["forces"][key] == pytest.approx(whole["forces"][key], rel=1e-9, abs=1e-12)

    # against a direct least squares on the full counts matrix
    cfg = np.repeat(np.arange(n), np.diff(ptr))
    x = np.stack([np.bincount(cfg[numbers == z], minlength=n) for z in (1, 6, 8)], axis=1).astype(float)
    e0, *_ = np.linalg.lstsq(x, energy, rcond=None)
    got = [sharded["atomic_energies"][s] for s in ("H", "C", "O")]
    np.testing.assert_allclose(got, e0, rtol=1e-8)
    np.testing.assert_allclose(got, [-13.6, -1029.0, -2041.0], atol=0.1)  # the generating values
    resid = (energy - x @ e0) / np.diff(ptr)
    assert sharded["energy_per_atom"]["mean"] == pytest.approx(resid.mean(), abs=1e-9)
    assert sharded["energy_per_atom"]["std"] == pytest.approx(resid.std(), rel=1e-6)
    assert sharded["forces"]["std"] == pytest.approx(forces.std(), rel=1e-10)
    assert sharded["forces"]["rms"] == pytest.approx(np.sqrt((forces**2).mean()), rel=1e-10)
    assert sharded["targets"]["esps"]["mean"] == pytest.approx(esps.mean(), rel=1e-10)
    h = numbers == 1
    assert sharded["targets"]["esps"]["per_element"]["H"]["std"] == pytest.approx(esps[h].std(), rel=1e-10)
    assert sharded["scales"]["dipole_rms"] == pytest.approx(np.sqrt((dipole[dmask] ** 2).mean()), rel=1e-10)
    assert sharded["targets"]["dipole"]["n"] == int(dmask.sum())
    assert sharded["e0"]["rank"] == 3 and not sharded["e0"]["underdetermined"]


def test_underdetermined_e0_warns_and_stays_finite():
    # water only: every config has H:O = 2:1, rank 1 < 2 elements
    n_mol = np.array([1, 2, 3, 5])
    numbers = np.concatenate([np.tile([8, 1, 1], k) for k in n_mol])
    ptr = np.concatenate([[0], np.cumsum(3 * n_mol)])
    energy = -14.2 * n_mol
    sums = shard_sums(numbers, ptr, energy=(energy, np.ones(4, bool)))
    with pytest.warns(UnderdeterminedWarning, match="rank 1 < 2"):
        out = finalize(merge([sums]))
    assert out["e0"]["underdetermined"] and out["e0"]["rank"] == 1
    e = out["atomic_energies"]
    assert 2 * e["H"] + e["O"] == pytest.approx(-14.2, rel=1e-9)  # the determined combination
    assert out["energy_per_atom"]["std"] == pytest.approx(0.0, abs=1e-9)


def test_strict_json_without_data():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = finalize(merge([shard_sums(np.zeros(0, int), np.zeros(1, int))]))
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)["forces"]["rms"] is None
    assert out["atomic_energies"] is None and out["n_configs"] == 0


def test_elements_only_in_configs_without_energy_get_no_e0_and_no_warning():
    # H2O configs with energies of independent compositions, plus Na/Cl configs whose energy is absent
    comps = [(1, 1), (2, 1), (4, 3), (1, 2)]  # (n_H, n_O)
    e0 = {1: -13.6, 8: -2041.0}
    numbers = [np.r_[[1] * h, [8] * o] for h, o in comps] + [np.array([11, 17]), np.array([11, 11, 17])]
    ptr = np.concatenate([[0], np.cumsum([len(z) for z in numbers])])
    energy = np.array([h * e0[1] + o * e0[8] for h, o in comps] + [123.0, 456.0])
    mask = np.array([True] * 4 + [False, False])
    parts = [shard_sums(np.concatenate(numbers[:3]), ptr[:4], energy=(energy[:3], mask[:3])),
             shard_sums(np.concatenate(numbers[3:]), ptr[3:] - ptr[3], energy=(energy[3:], mask[3:]))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedWarning)
        out = finalize(merge(parts))
    assert out["elements"] == ["H", "O", "Na", "Cl"]
    assert out["atomic_energies"]["Na"] is None and out["atomic_energies"]["Cl"] is None
    assert out["atomic_energies"]["H"] == pytest.approx(-13.6, rel=1e-9)
    assert out["atomic_energies"]["O"] == pytest.approx(-2041.0, rel=1e-9)
    assert out["e0"]["rank"] == 2 and out["e0"]["n_elements"] == 2 and not out["e0"]["underdetermined"]
    assert out["e0"]["elements_without_energy"] == ["Na", "Cl"]
    assert out["energy_per_atom"]["n"] == 4 and out["energy_per_atom"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert out["energy_per_atom"]["std"] == pytest.approx(0.0, abs=1e-4)  # one-pass sums: sqrt(rounding)
    assert json.loads(json.dumps(out, allow_nan=False))["atomic_energies"]["Na"] is None


# ------------------------------------------------------------------------------------------------
# E0 diagnostics, supplied E0s
# ------------------------------------------------------------------------------------------------

ZS = [1, 6, 7, 8]
KNOWN_E0 = np.array([-13.6, -1029.4, -1484.2, -2041.3])


def _compositions(n, seed, noise):
    """Near-water compositions (H:O mostly 2:1, little C and N: condition number ~10²) with energies
    from known E0s, plus noise per config."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 30, n)
    x = np.array([2, 0, 0, 1])[None, :] * k[:, None]
    x[:, 1] += rng.random(n) < 0.05
    x[:, 2] += rng.random(n) < 0.05
    x[:, 0] += rng.random(n) < 0.3
    numbers = np.concatenate([np.repeat(ZS, row) for row in x])
    ptr = np.concatenate([[0], np.cumsum(x.sum(axis=1))])
    return x.astype(float), numbers, ptr, x @ KNOWN_E0 + rng.normal(0, noise, n)


def _shard_parts(numbers, ptr, energy, cuts):
    bounds = [0, *cuts, len(energy)]
    return [shard_sums(numbers[ptr[a]:ptr[b]], ptr[a:b + 1] - ptr[a], energy=(energy[a:b], np.ones(b - a, bool)))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_e0_fit_and_diagnostics_match_an_independent_least_squares(noise):
    x, numbers, ptr, energy = _compositions(400, seed=3, noise=noise)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedWarning)
        out = finalize(merge(_shard_parts(numbers, ptr, energy, [100, 100, 257])))  # one empty shard
    ref, *_ = np.linalg.lstsq(x, energy, rcond=None)
    got = np.array([out["atomic_energies"][s] for s in ("H", "C", "N", "O")])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)
    if noise == 0.0:
        np.testing.assert_allclose(got, KNOWN_E0, rtol=1e-10, atol=0)
    info = out["e0"]
    assert info["rank"] == 4 and info["n_elements"] == 4 and info["undetermined_elements"] == []
    assert info["condition_number"] == pytest.approx(np.linalg.cond(x), rel=1e-8)
    assert 50 < info["condition_number"] < 1e4
    np.testing.assert_allclose(info["singular_values"], np.linalg.svd(x, compute_uv=False), rtol=1e-8)
    resid = energy - x @ ref
    assert info["residual_rms"] == pytest.approx(np.sqrt(np.mean(resid**2)), rel=1e-6, abs=1e-9)
    assert info["residual_rms_per_atom"] == pytest.approx(np.sqrt(np.mean((resid / x.sum(axis=1)) ** 2)),
                                                          rel=1e-8, abs=1e-12)
    assert info["per_element"]["C"] == {"n_configs": int((x[:, 1] > 0).sum()), "n_atoms": int(x[:, 1].sum())}
    assert info["source"] == {"H": "fit", "C": "fit", "N": "fit", "O": "fit"} and info["method"] == "least_squares"


def _water(n_mol=(1, 2, 3, 5), e_water=-14.2, extra=()):
    """Water clusters (H:O always 2:1) and optional extra configs [(numbers, energy)]."""
    frames = [(np.tile([8, 1, 1], k), e_water * k) for k in n_mol] + list(extra)
    numbers = np.concatenate([z for z, _ in frames])
    ptr = np.concatenate([[0], np.cumsum([len(z) for z, _ in frames])])
    energy = np.array([e for _, e in frames])
    return shard_sums(numbers, ptr, energy=(energy, np.ones(len(frames), bool)))


def test_rank_warning_names_the_collinear_elements_and_how_to_supply_e0():
    # water clusters plus sodium clusters: Na is determined, H and O are not
    sums = _water(extra=[(np.array([11, 11]), -2 * 1.3), (np.array([11] * 5), -5 * 1.3)])
    with pytest.warns(UnderdeterminedWarning) as rec:
        out = finalize(merge([sums]))
    msg = str(rec[0].message)
    assert "E0 of H, O is not determined" in msg and "Na" not in msg.split("determined")[0]
    assert "--e0" in msg and "statistics: {e0:" in msg
    info = out["e0"]
    assert info["rank"] == 2 and info["n_elements"] == 3 and info["underdetermined"]
    assert info["undetermined_elements"] == ["H", "O"] and info["condition_number"] is None
    assert info["source"] == {"H": "undetermined", "O": "undetermined", "Na": "fit"}
    assert out["atomic_energies"]["Na"] == pytest.approx(-1.3, rel=1e-12)
    assert info["residual_rms"] == pytest.approx(0.0, abs=1e-10)


def test_no_rank_warning_for_independent_compositions():
    sums = _water(extra=[(np.array([1, 1]), -31.7)])  # H2 makes H and O independent
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedWarning)
        out = finalize(merge([sums]))
    assert out["e0"]["undetermined_elements"] == [] and out["e0"]["rank"] == 2
    assert out["atomic_energies"]["H"] == pytest.approx(-31.7 / 2, rel=1e-12)
    assert out["atomic_energies"]["O"] == pytest.approx(-14.2 + 31.7, rel=1e-12)


def test_supplied_e0_take_precedence_and_resolve_the_rank():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedWarning)
        out = finalize(merge([_water()]), e0={"H": -13.6})
    assert out["atomic_energies"] == {"H": -13.6, "O": pytest.approx(-14.2 + 2 * 13.6, rel=1e-12)}
    info = out["e0"]
    assert info["method"] == "least_squares+supplied" and info["supplied"] == {"H": -13.6}
    assert info["source"] == {"H": "supplied", "O": "fit"} and info["rank"] == 1 and info["n_elements"] == 1
    # supplied values win over what the data would give, for every element (atomic numbers accepted)
    x, numbers, ptr, energy = _compositions(100, seed=1, noise=0.0)
    out = finalize(merge(_shard_parts(numbers, ptr, energy, [40])), e0={"8": -2000.0, "C": -1000.0, "Li": -7.0})
    assert out["atomic_energies"]["O"] == -2000.0 and out["atomic_energies"]["C"] == -1000.0
    free = [0, 2]
    ref, *_ = np.linalg.lstsq(x[:, free], energy - x[:, 1] * -1000.0 - x[:, 3] * -2000.0, rcond=None)
    np.testing.assert_allclose([out["atomic_energies"]["H"], out["atomic_energies"]["N"]], ref, rtol=1e-10)
    assert out["e0"]["supplied_not_in_data"] == ["Li"] and "Li" not in out["atomic_energies"]
    out = finalize(merge([_water()]), e0={"H": -13.6, "O": -432.0})
    assert out["e0"]["method"] == "supplied" and out["atomic_energies"] == {"H": -13.6, "O": -432.0}


@pytest.mark.parametrize("bad,expected", [({"Xx": 1.0}, "'Xx' is not an element"),
                                          ({"H": "a lot"}, "E0 of H must be a finite number"),
                                          ({"H": True}, "E0 of H must be a finite number"),
                                          ({"0": 1.0}, "'0' is not an element")])
def test_bad_supplied_e0_is_a_clear_error(bad, expected):
    with pytest.raises(ValueError, match=expected):
        finalize(merge([_water()]), e0=bad)


# ------------------------------------------------------------------------------------------------
# the commands: split report, --e0
# ------------------------------------------------------------------------------------------------


def _base(path, frames):
    """A base file of (numbers, config_type, energy) frames."""
    from scfdata.columns import Columns
    from scfdata.h5io import write_columns

    n_atoms = np.array([len(z) for z, _, _ in frames])
    numbers = np.concatenate([z for z, _, _ in frames]).astype(np.int64)
    pos = np.random.default_rng(len(numbers)).uniform(0, 5, (len(numbers), 3))
    n = len(frames)
    cols = Columns(n_atoms=n_atoms, atoms={"numbers": numbers, "positions": pos},
                   configs={"cell": np.zeros((n, 3, 3)), "pbc": np.zeros((n, 3), bool),
                            "config_type": np.array([t for _, t, _ in frames]),
                            "energy": np.array([e for _, _, e in frames])},
                   masks={"energy": np.ones(n, bool)})
    return write_columns(path, cols)


def test_statistics_commands_write_the_split_report_and_use_supplied_e0(tmp_path, caplog):
    from scfdata.cli import main
    from scfdata.split import write_split

    water = lambda k: (np.tile([8, 1, 1], k), "water", -14.2 * k)  # noqa: E731
    salt = (np.array([11, 17]), "salt", -6.0)
    shards = [_base(tmp_path / "b0.h5", [water(1), water(2), salt, water(3)]),
              _base(tmp_path / "b1.h5", [salt, water(4), (np.array([6, 8]), "co", -20.0)])]
    labels = [np.array([0, 1, 0, 2], np.int8), np.array([1, 0, 2], np.int8)]
    write_split(tmp_path / "split.npz", labels, {})
    for k, b in enumerate(shards):
        assert main(["statistics-shard", "--split", str(tmp_path / "split.npz"), "--shard", str(k), str(b),
                     "-o", str(tmp_path / f"s{k}.json")]) == 0
    sums = [str(tmp_path / f"s{k}.json") for k in range(2)]
    with caplog.at_level("WARNING"):
        assert main(["statistics", *sums, "-o", str(tmp_path / "st.json")]) == 0
    st = json.loads((tmp_path / "st.json").read_text())
    rep = st["split_report"]
    assert rep["configs"] == {"train": 3, "valid": 2, "test": 2}
    assert rep["per_element"] == {"H": {"train": 2, "valid": 1, "test": 1}, "C": {"train": 0, "valid": 0, "test": 1},
                                  "O": {"train": 2, "valid": 1, "test": 2}, "Na": {"train": 1, "valid": 1, "test": 0},
                                  "Cl": {"train": 1, "valid": 1, "test": 0}}
    assert rep["per_config_type"] == {"co": {"train": 0, "valid": 0, "test": 1},
                                      "salt": {"train": 1, "valid": 1, "test": 0},
                                      "water": {"train": 2, "valid": 1, "test": 1}}
    assert rep["elements_missing_from_train"] == {"C": ["test"]}
    assert any("train holds no config with C (in test)" in r.getMessage() for r in caplog.records)
    # train: water(1), salt, water(4): H and O collinear -> the warning; Na, Cl collinear too
    assert st["e0"]["undetermined_elements"] == ["H", "O", "Na", "Cl"]
    assert any("E0 of H, O, Na, Cl is not determined" in w for w in st["warnings"])
    # supplied E0s (an option or a file) take precedence and resolve the rank
    (tmp_path / "e0.json").write_text('{"H": -13.6, "Na": -1.3}')
    for e0 in ('{"H": -13.6, "Na": -1.3}', str(tmp_path / "e0.json")):
        assert main(["statistics", *sums, "--e0", e0, "-o", str(tmp_path / "st2.json")]) == 0
        st = json.loads((tmp_path / "st2.json").read_text())
        assert st["warnings"] == [] and st["e0"]["undetermined_elements"] == []
        assert st["atomic_energies"]["H"] == -13.6 and st["atomic_energies"]["Na"] == -1.3
        assert st["atomic_energies"]["O"] == pytest.approx(-14.2 + 27.2, rel=1e-12)
        assert st["atomic_energies"]["Cl"] == pytest.approx(-6.0 + 1.3, rel=1e-12)


@pytest.mark.parametrize("e0,expected", [("{H: 1}", "--e0: not valid JSON"), ('{"Q": 1}', "'Q' is not an element"),
                                         ("[1, 2]", "--e0: expected supplied E0s")])
def test_statistics_bad_e0_option_is_one_line(e0, expected, tmp_path, capsys):
    from scfdata.cli import main

    shard = _base(tmp_path / "b.h5", [(np.array([1, 1]), "h2", -31.7)])
    assert main(["statistics-shard", str(shard), "--subset", "all", "-o", str(tmp_path / "s.json")]) == 0
    assert main(["statistics", str(tmp_path / "s.json"), "--e0", e0, "-o", str(tmp_path / "st.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("scfdata statistics: error: ") and "\n" not in err and expected in err, err
    assert not (tmp_path / "st.json").exists()
