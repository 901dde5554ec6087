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
