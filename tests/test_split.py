import itertools
import json
import logging

import numpy as np
import pytest

from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.h5io import write_columns
from scfdata.split import (
    TEST,
    TRAIN,
    VALID,
    GroupIds,
    assign_splits,
    config_formulas,
    elements_missing_from_train,
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


# ------------------------------------------------------------------------------------------------
# every element in train
# ------------------------------------------------------------------------------------------------


def _covering_split_exists(group_el, sizes, n_test, n_valid) -> bool:
    """Brute force over every assignment of groups: train holds every element while test and valid
    reach their target counts."""
    for assign in itertools.product((TRAIN, VALID, TEST), repeat=len(sizes)):
        a = np.array(assign)
        if (group_el[a == TRAIN].any(axis=0).all() and sizes[a == TEST].sum() >= n_test
                and sizes[a == VALID].sum() >= n_valid):
            return True
    return False


@pytest.mark.parametrize("trial", range(60))
def test_train_holds_every_element_whenever_a_split_that_does_so_exists(trial):
    rng = np.random.default_rng(trial)
    n_groups, n_el = int(rng.integers(2, 7)), int(rng.integers(2, 5))
    group_el = rng.random((n_groups, n_el)) < 0.35
    group_el[rng.integers(0, n_groups, n_el), np.arange(n_el)] = True  # every element somewhere
    group_el[np.arange(n_groups), rng.integers(0, n_el, n_groups)] = True  # every group holds an element
    sizes = rng.integers(1, 6, n_groups)
    gid = np.repeat(np.arange(n_groups), sizes)
    cfg_el = group_el[gid]
    f_valid, f_test = rng.choice([0.0, 0.1, 0.2, 0.3, 0.4], 2)
    total = int(sizes.sum())
    n_test = round(f_test * total)
    n_valid = min(round(f_valid * total), total - n_test)
    seed = int(rng.integers(0, 100))
    cut = int(rng.integers(0, total + 1))  # two shards
    kw = dict(valid_fraction=f_valid, test_fraction=f_test, seed=seed)
    lab = np.concatenate(assign_splits([cut, total - cut], groups=[gid[:cut], gid[cut:]],
                                       elements=[cfg_el[:cut], cfg_el[cut:]], **kw))
    for g in range(n_groups):
        assert len(np.unique(lab[gid == g])) == 1
    covered = cfg_el[lab == TRAIN].any(axis=0).all()
    if _covering_split_exists(group_el, sizes, n_test, n_valid):
        assert covered
        assert (lab == TEST).sum() >= n_test  # test still reaches its target
    missing = elements_missing_from_train(lab, cfg_el, list(range(1, n_el + 1)))
    assert bool(missing) == (not covered)
    # deterministic for a seed, and independent of the sharding
    again = np.concatenate(assign_splits([total], groups=[gid], elements=[cfg_el], **kw))
    np.testing.assert_array_equal(lab, again)
    # without element information: the plain seeded fill; kept as is when train already holds everything
    plain = np.concatenate(assign_splits([total], groups=[gid], **kw))
    if cfg_el[plain == TRAIN].any(axis=0).all():
        np.testing.assert_array_equal(lab, plain)


def test_config_type_split_keeps_the_only_carbon_type_in_train():
    """The first-contact case: every carbon config in one config_type; seeds whose plain fill sends that
    type to valid/test now keep it in train, with the fractions still met."""
    sizes = np.array([10, 10, 10, 10, 10, 10])  # types 0..5; type 5 the only one with carbon
    gid = np.repeat(np.arange(6), sizes)
    cfg_el = np.zeros((60, 3), dtype=bool)
    cfg_el[:, 0] = True  # H everywhere
    cfg_el[:, 1] = True  # O everywhere
    cfg_el[gid == 5, 2] = True
    moved = 0
    for seed in range(30):
        kw = dict(valid_fraction=0.2, test_fraction=0.2, seed=seed, groups=[gid])
        plain = assign_splits([60], **kw)[0]
        lab = assign_splits([60], elements=[cfg_el], **kw)[0]
        assert (lab[gid == 5] == TRAIN).all()
        assert (lab == VALID).sum() == 20 and (lab == TEST).sum() == 20
        moved += int((plain[gid == 5] != TRAIN).all())
    assert moved > 0  # some seeds did lose carbon before


def test_random_split_moves_a_rare_element_into_train_and_keeps_the_counts():
    cfg_el = np.zeros((50, 2), dtype=bool)
    cfg_el[:, 0] = True
    cfg_el[17, 1] = True  # one config with the rare element
    for seed in range(40):
        lab = assign_splits([50], valid_fraction=0.2, test_fraction=0.2, seed=seed, elements=[cfg_el])[0]
        assert lab[17] == TRAIN
        assert np.bincount(lab, minlength=3).tolist() == [30, 10, 10]


def test_elements_missing_from_train_names_the_splits():
    lab = np.array([TRAIN, VALID, TEST, TEST])
    el = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=bool)
    assert elements_missing_from_train(lab, el, [1, 6, 11]) == {"C": ["valid", "test"], "Na": ["test"]}


def _shard(path, numbers_per_config, config_types):
    n_atoms = np.array([len(z) for z in numbers_per_config])
    numbers = np.concatenate(numbers_per_config).astype(np.int64)
    rng = np.random.default_rng(len(numbers))
    cols = Columns(n_atoms=n_atoms, atoms={"numbers": numbers, "positions": rng.uniform(0, 5, (len(numbers), 3))},
                   configs={"cell": np.zeros((len(n_atoms), 3, 3)), "pbc": np.zeros((len(n_atoms), 3), bool),
                            "config_type": np.array(config_types)})
    return write_columns(path, cols)


def test_split_command_warns_when_train_cannot_hold_every_element(tmp_path, caplog):
    # each config_type carries its own element: any valid/test group takes an element away from train
    a = _shard(tmp_path / "a.h5", [[1, 1, 8]] * 4 + [[6, 1, 1, 1, 1]] * 3, ["water"] * 4 + ["methane"] * 3)
    b = _shard(tmp_path / "b.h5", [[11, 17]] * 3 + [[8, 1, 1]] * 3, ["salt"] * 3 + ["water_2"] * 3)
    settings = json.dumps({"valid_fraction": 0.3, "test_fraction": 0.3, "seed": 1, "by": "config_type"})
    with caplog.at_level(logging.WARNING, logger="scfdata.split"):
        assert main(["split", "--settings", settings, str(a), str(b), "-o", str(tmp_path / "s.npz")]) == 0
    labels, meta = read_split(tmp_path / "s.npz")
    lab = np.concatenate(labels)
    missing = meta["elements_missing_from_train"]
    assert missing and set(missing) <= {"C", "Na", "Cl", "H", "O"}
    assert (lab == VALID).sum() >= 4 and (lab == TEST).sum() >= 4
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("train holds no config with" in w and all(el in w for el in missing) for w in warned), warned
    # with smaller fractions a covering split exists (one water type to test): no warning, every element in train
    caplog.clear()
    settings = json.dumps({"valid_fraction": 0.0, "test_fraction": 0.3, "seed": 1, "by": "config_type"})
    with caplog.at_level(logging.WARNING, logger="scfdata.split"):
        assert main(["split", "--settings", settings, str(a), str(b), "-o", str(tmp_path / "t.npz")]) == 0
    labels, meta = read_split(tmp_path / "t.npz")
    assert meta["elements_missing_from_train"] == {}
    lab = np.concatenate(labels)
    assert (lab == TEST).sum() >= 4 and lab[:4].tolist() == [TEST] * 4  # the first water type: 4 of 13
    assert not [r for r in caplog.records if "train holds no config" in r.getMessage()]
