import numpy as np
import pytest

from scfdata.split import (
    TEST,
    TRAIN,
    VALID,
    GroupIds,
    assign_splits,
    config_formulas,
    hill_formula,
    molecule_set_keys,
    read_split,
    write_split,
)


def test_random_split_exact_counts_and_deterministic():
    a = assign_splits([30, 0, 45, 25], valid_fraction=0.1, test_fraction=0.2, seed=7)
    b = assign_splits([30, 0, 45, 25], valid_fraction=0.1, test_fraction=0.2, seed=7)
    assert [len(x) for x in a] == [30, 0, 45, 25]
    assert all(x.dtype == np.int8 for x in a)
    lab = np.concatenate(a)
    assert (lab == TEST).sum() == 20 and (lab == VALID).sum() == 10 and (lab == TRAIN).sum() == 70
    np.testing.assert_array_equal(lab, np.concatenate(b))
    other = np.concatenate(assign_splits([100], valid_fraction=0.1, test_fraction=0.2, seed=8))
    assert not np.array_equal(lab, other)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 10, 11, 60])
@pytest.mark.parametrize("f_valid,f_test", [(0.5, 0.5), (0.25, 0.25), (0.75, 0.25), (0.1, 0.2), (0.2, 0.1),
                                            (0.05, 0.95), (0.0, 1.0), (0.35, 0.65)])
def test_random_split_counts_follow_the_documented_formula(n, f_valid, f_test):
    lab = np.concatenate(assign_splits([n], valid_fraction=f_valid, test_fraction=f_test, seed=2)) if n else []
    counts = np.bincount(np.asarray(lab, dtype=np.int64), minlength=3)
    n_test = round(f_test * n)
    n_valid = min(round(f_valid * n), n - n_test)
    assert counts.tolist() == [n - n_test - n_valid, n_valid, n_test]
    assert all(c >= 0 for c in counts)


def test_random_split_three_configs_half_half():
    lab = np.concatenate(assign_splits([3], valid_fraction=0.5, test_fraction=0.5, seed=0))
    assert np.bincount(lab, minlength=3).tolist() == [0, 1, 2]  # test round(1.5)=2, valid capped at 3-2
    # the workflow example: 60 configs, 0.2 valid / 0.1 test -> 42/12/6
    lab = np.concatenate(assign_splits([20, 40], valid_fraction=0.2, test_fraction=0.1, seed=3))
    assert np.bincount(lab, minlength=3).tolist() == [42, 12, 6]


def test_random_split_does_not_depend_on_sharding():
    one = assign_splits([100], valid_fraction=0.15, test_fraction=0.15, seed=1)[0]
    many = np.concatenate(assign_splits([10, 33, 0, 57], valid_fraction=0.15, test_fraction=0.15, seed=1))
    np.testing.assert_array_equal(one, many)


def test_no_split_is_all_train():
    lab = assign_splits([5, 6])
    assert all((x == TRAIN).all() for x in lab)


def test_groups_never_straddle_splits():
    rng = np.random.default_rng(0)
    gid = rng.integers(0, 12, size=200)
    parts = np.split(gid, [50, 120])
    lab = np.concatenate(assign_splits([50, 70, 80], valid_fraction=0.2, test_fraction=0.2, seed=4, groups=parts))
    for g in np.unique(gid):
        assert len(np.unique(lab[gid == g])) == 1, f"group {g} straddles splits"
    # each split reaches its target (overshooting by at most one group)
    sizes = np.bincount(gid)
    for s in (VALID, TEST):
        n = (lab == s).sum()
        assert 40 <= n < 40 + sizes.max()


def test_bad_fractions_raise():
    with pytest.raises(ValueError, match="valid_fraction \\+ test_fraction <= 1"):
        assign_splits([10], valid_fraction=0.6, test_fraction=0.6)


def test_hill_formula():
    assert hill_formula({"O": 1, "H": 2}) == "H2O"
    assert hill_formula({"C": 2, "H": 6, "O": 1}) == "C2H6O"
    assert hill_formula({"Na": 1, "Cl": 1}) == "ClNa"


def test_config_formulas_vectorised():
    # configs: H2O, NaCl, H2O, (H2O)2
    numbers = np.array([8, 1, 1, 11, 17, 1, 8, 1, 8, 1, 1, 8, 1, 1])
    ptr = np.array([0, 3, 5, 8, 14])
    names, inv = config_formulas(numbers, ptr)
    assert [names[i] for i in inv] == ["H2O", "ClNa", "H2O", "H4O2"]


def test_molecule_set_keys():
    formula = np.array(["H2O", "H2O", "CH4", "H2O", "CH4", "H2O"])
    mptr = np.array([0, 2, 4, 4, 6])  # {H2O}, {CH4, H2O}, {}, {CH4, H2O}
    keys, inv = molecule_set_keys(formula, mptr)
    assert [keys[i] for i in inv] == ["H2O", "CH4+H2O", "", "CH4+H2O"]


def test_group_ids_follow_names_not_shard_order():
    a, b = GroupIds(), GroupIds()
    a.add(["x", "y"], np.array([0, 1, 1]))
    a.add(["z", "x"], np.array([0, 1]))
    b.add(["x", "z"], np.array([1, 0]))
    b.add(["y", "x"], np.array([1, 0, 0]))
    names_a, ids_a = a.ids()
    names_b, ids_b = b.ids()
    assert names_a == names_b == ["x", "y", "z"]
    np.testing.assert_array_equal(np.concatenate(ids_a), [0, 1, 1, 2, 0])
    np.testing.assert_array_equal(np.concatenate(ids_b), [2, 0, 0, 1, 1])


def test_split_file_roundtrip(tmp_path):
    labels = assign_splits([3, 0, 4], valid_fraction=0.3, seed=2)
    write_split(tmp_path / "s.npz", labels, {"settings": {"seed": 2}})
    back, meta = read_split(tmp_path / "s.npz")
    assert meta == {"settings": {"seed": 2}}
    assert [x.dtype for x in back] == [np.int8] * 3
    for x, y in zip(labels, back):
        np.testing.assert_array_equal(x, y)
