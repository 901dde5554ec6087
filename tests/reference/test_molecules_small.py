"""The small-config path of the molecule assignment: open-boundary configs of at most SMALL_CONFIG_ATOMS atoms
get their bonds from all atom pairs (numpy, configs of one atom count stacked) and their molecules from
label propagation (``components``).

References: a per-config brute force (every pair's distance against the cutoff table, components by
scipy's csgraph, molecules numbered by first atom), and the cKDTree + csgraph path itself (the path of the
large and periodic configs, forced for every config by SMALL_CONFIG_ATOMS = 0): every field of the
assignment identical, on random clusters, chains, isolated atoms, 1-atom and empty configs, configs of 64
and 65 atoms (the threshold), mixed with periodic configs, with raised scales and pair overrides.
"""

import subprocess
import sys

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from scfdata.reference import molecules as mol
from scfdata.reference.molecules import (
    SMALL_CONFIG_ATOMS,
    _cutoff_table,
    assign_molecules_batch,
    components,
    molecules_from_key,
)

SPECIES = np.array([1, 6, 7, 8, 11, 17])  # H C N O Na Cl


def _random_clusters(rng, counts, density=0.08):
    """Configs of the given atom counts: random species, uniform positions at ``density`` atoms/Å³
    (a mix of isolated atoms, small molecules and larger networks)."""
    numbers, positions = [], []
    for n in counts:
        side = max(n / density, 1.0) ** (1 / 3)
        numbers.append(rng.choice(SPECIES, n))
        positions.append(rng.uniform(0, side, (n, 3)))
    ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return np.concatenate(numbers).astype(np.int64), np.concatenate(positions).reshape(-1, 3), ptr


def _chain(rng, n, spacing=1.5, gap_after=None):
    """n carbon atoms along a random zigzag (steps of ``spacing`` Å, bonded: cutoff 1.2 * 1.52 Å; each step
    at least 1.2 Å along x, so only neighbours along the walk bond), stored in a random order; a gap of
    4 Å after atom ``gap_after`` of the walk cuts it in two molecules.
    Returns (numbers, positions, walk order of the stored atoms)."""
    steps = np.column_stack([np.ones(n), rng.uniform(-0.5, 0.5, (n, 2))])
    steps *= spacing / np.linalg.norm(steps, axis=1, keepdims=True)
    if gap_after is not None:
        steps[gap_after + 1] *= 4.0 / spacing
    walk = np.cumsum(steps, axis=0)
    perm = rng.permutation(n)
    return np.full(n, 6, np.int64), walk[perm], perm


def _brute_force(numbers, positions, ptr, covalent_scale=1.2, pair_overrides=None):
    """(molecule, n_molecules) per config from every pair's distance, one config at a time."""
    table = _cutoff_table(covalent_scale, pair_overrides)
    molecule, n_mol = [], []
    for c in range(len(ptr) - 1):
        z, x = numbers[ptr[c]:ptr[c + 1]], positions[ptr[c]:ptr[c + 1]]
        n = len(z)
        a, b = np.triu_indices(n, 1)
        bonded = np.array([np.linalg.norm(x[q] - x[p]) <= table[z[p], z[q]] for p, q in zip(a, b)], bool)
        g = coo_matrix((np.ones(int(bonded.sum())), (a[bonded], b[bonded])), shape=(n, n))
        _, lab = connected_components(g, directed=False)
        seen = {}
        molecule.append([seen.setdefault(v, len(seen)) for v in lab])
        n_mol.append(len(seen))
    return np.concatenate(molecule + [[]]).astype(np.int64), np.array(n_mol)


def _both_paths(monkeypatch, *args, fn=assign_molecules_batch, **kwargs):
    """The assignment with the small-config path (default) and with every config on the cKDTree path."""
    fast = fn(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(mol, "SMALL_CONFIG_ATOMS", 0)
        slow = fn(*args, **kwargs)
    return fast, slow


def _assert_identical(fast, slow):
    for name in ("molecule", "n_molecules", "unwrapped_positions", "extended", "formula"):
        a, b = np.asarray(getattr(fast, name)), np.asarray(getattr(slow, name))
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs"
    assert fast.reason == slow.reason


# ------------------------------------------------------------------------------------------- components


def test_components_are_the_smallest_atom_of_each_component():
    rng = np.random.default_rng(3)
    for n, e in [(0, 0), (1, 0), (50, 0), (200, 150), (500, 480), (300, 1000)]:
        i, j = rng.integers(0, max(n, 1), (2, e))
        label = components(n, i, j)
        _, ref = connected_components(coo_matrix((np.ones(e), (i, j)), shape=(n, n)), directed=False)
        # same partition, and each label is the smallest atom of its component
        mins = np.full(ref.max() + 1 if n else 0, n)
        np.minimum.at(mins, ref, np.arange(n))
        assert np.array_equal(label, mins[ref])


@pytest.mark.parametrize("order", ["forward", "reversed", "random"])
def test_components_of_a_long_path(order):
    """A path of 1000 atoms (the worst case for propagation) numbered along, against or across it."""
    n = 1000
    walk = {"forward": np.arange(n), "reversed": np.arange(n)[::-1],
            "random": np.random.default_rng(0).permutation(n)}[order]
    label = components(n, walk[:-1], walk[1:])
    assert (label == 0).all()
    # cut in the middle of the walk: two components, each labelled by its smallest atom
    label = components(n, np.r_[walk[:499], walk[500:-1]], np.r_[walk[1:500], walk[501:]])
    assert (label[walk[:500]] == walk[:500].min()).all() and (label[walk[500:]] == walk[500:].min()).all()


# ------------------------------------------------------------------------------------------- small path


@pytest.mark.parametrize("density", [0.02, 0.08, 0.15])
def test_random_clusters_equal_brute_force_and_the_kdtree_path(density, monkeypatch):
    rng = np.random.default_rng(int(density * 100))
    counts = rng.choice([0, 1, 2, 3, 4, 7, 12, 25, 40, 63, SMALL_CONFIG_ATOMS, SMALL_CONFIG_ATOMS + 1, 80], 120)
    numbers, positions, ptr = _random_clusters(rng, counts, density)
    fast, slow = _both_paths(monkeypatch, numbers, positions, ptr, None, None)
    _assert_identical(fast, slow)
    molecule, n_mol = _brute_force(numbers, positions, ptr)
    assert np.array_equal(fast.molecule, molecule) and np.array_equal(fast.n_molecules, n_mol)
    # the data hold isolated atoms, molecules and (at the higher densities) networks
    assert n_mol.sum() < len(numbers) and (n_mol[counts > 1] > 1).any()


def test_isolated_atoms_one_atom_and_empty_configs(monkeypatch):
    n = 20
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 5.0
    counts = np.array([0, 1, 1, n, 0, 2, SMALL_CONFIG_ATOMS, 0])
    positions = np.concatenate([grid[:1], grid[:1] + 0.3, grid, grid[:2], *[grid] * 3, grid[:SMALL_CONFIG_ATOMS - 60]])
    numbers = np.full(len(positions), 8, np.int64)
    ptr = np.r_[0, np.cumsum(counts)]
    assert ptr[-1] == len(positions)
    positions[ptr[6]:ptr[7]] += np.repeat(np.arange(4), [20, 20, 20, 4])[:, None] * 100.0  # 64 apart
    fast, slow = _both_paths(monkeypatch, numbers, positions, ptr, None, None)
    _assert_identical(fast, slow)
    assert fast.n_molecules.tolist() == [0, 1, 1, n, 0, 2, SMALL_CONFIG_ATOMS, 0]
    assert np.array_equal(fast.molecule[ptr[3]:ptr[4]], np.arange(n))
    assert fast.reason[0] == mol.REASON_EMPTY and fast.reason[1] == mol.REASON_SINGLE


@pytest.mark.parametrize("n", [2, 63, SMALL_CONFIG_ATOMS, SMALL_CONFIG_ATOMS + 1])
def test_chains_at_the_threshold(n, monkeypatch):
    """Chains of n atoms (stored in a random order), whole and cut in two: one molecule, then two, the
    molecule of the first stored atom numbered 0."""
    rng = np.random.default_rng(n)
    z1, x1, _ = _chain(rng, n)
    z2, x2, perm = _chain(rng, n, gap_after=n // 2 - 1)
    numbers, positions = np.r_[z1, z2], np.r_[x1, x2]
    ptr = np.array([0, n, 2 * n])
    fast, slow = _both_paths(monkeypatch, numbers, positions, ptr, None, None)
    _assert_identical(fast, slow)
    assert fast.n_molecules.tolist() == [1, 2]
    half = perm >= n // 2  # stored atoms in the second half of the walk
    expect = np.where(half == half[0], 0, 1)
    assert np.array_equal(fast.molecule[n:], expect)
    sizes = np.bincount(expect)
    assert fast.formula.tolist() == [f"C{n}"] + [f"C{s}" if s > 1 else "C" for s in sizes]


def test_chain_formulas_and_sizes():
    rng = np.random.default_rng(1)
    z, x, perm = _chain(rng, 30, gap_after=9)  # walk atoms 0..9 and 10..29
    a = assign_molecules_batch(z, x, np.array([0, 30]), None, None)
    first_in_short = perm[0] < 10
    assert a.formula.tolist() == (["C10", "C20"] if first_in_short else ["C20", "C10"])
    assert np.bincount(a.molecule).tolist() == ([10, 20] if first_in_short else [20, 10])


def test_small_chunks_of_pairs(monkeypatch):
    """A pair budget smaller than one config's pairs: every config in its own chunk, same result."""
    rng = np.random.default_rng(5)
    numbers, positions, ptr = _random_clusters(rng, rng.integers(0, 30, 60))
    ref = assign_molecules_batch(numbers, positions, ptr, None, None)
    monkeypatch.setattr(mol, "MAX_PAIRS", 7)
    _assert_identical(assign_molecules_batch(numbers, positions, ptr, None, None), ref)


def test_mixed_with_periodic_and_large_configs(monkeypatch):
    """Small open, large open and periodic configs in one batch: the labels of both paths combine."""
    rng = np.random.default_rng(11)
    counts = np.array([5, 90, 12, 30, 1, 70, 9])
    numbers, positions, ptr = _random_clusters(rng, counts, 0.1)
    cells = np.zeros((len(counts), 3, 3))
    pbc = np.zeros((len(counts), 3), bool)
    for c in (3, 5):  # periodic: a box about the config
        cells[c] = np.eye(3) * (positions[ptr[c]:ptr[c + 1]].max() + 0.5)
        pbc[c] = True
    fast, slow = _both_paths(monkeypatch, numbers, positions, ptr, cells, pbc)
    _assert_identical(fast, slow)
    open_ = ~pbc.any(axis=1)
    molecule, n_mol = _brute_force(numbers, positions, ptr)
    keep = np.repeat(open_, counts)
    assert np.array_equal(fast.molecule[keep], molecule[keep]) and np.array_equal(fast.n_molecules[open_],
                                                                                  n_mol[open_])


@pytest.mark.parametrize("scale, overrides", [(1.2, {"O-H": 1.3}), (1.6, None), (2.5, {("Na", "Cl"): 3.0})])
def test_raised_scales_and_overrides_with_their_reasons(scale, overrides, monkeypatch):
    rng = np.random.default_rng(int(scale * 10))
    counts = rng.choice([0, 1, 3, 8, 20, SMALL_CONFIG_ATOMS, SMALL_CONFIG_ATOMS + 1], 40)
    numbers, positions, ptr = _random_clusters(rng, counts, 0.03)
    # last config: O and H 1.25 Å apart, bonded only above the default cutoff (1.2 * 0.97 Å)
    numbers, positions = np.r_[numbers, 8, 1], np.r_[positions, [[0, 0, 0], [1.25, 0, 0]]]
    ptr = np.r_[ptr, ptr[-1] + 2]
    fast, slow = _both_paths(monkeypatch, numbers, positions, ptr, None, None, covalent_scale=scale,
                             pair_overrides=overrides)
    _assert_identical(fast, slow)
    molecule, n_mol = _brute_force(numbers, positions, ptr, scale, overrides)
    assert np.array_equal(fast.molecule, molecule) and np.array_equal(fast.n_molecules, n_mol)
    assert fast.reason[-1].startswith("whole system joined into one molecule") and "(2 molecules at the " \
        "default 1.2)" in fast.reason[-1], fast.reason[-1]


def test_key_source_with_periodic_configs(monkeypatch):
    """molecules_from_key makes molecules whole along bonds of both paths (open and periodic configs)."""
    rng = np.random.default_rng(2)
    counts = np.array([6, 12, 9])
    numbers, positions, ptr = _random_clusters(rng, counts, 0.1)
    ids = np.concatenate([rng.integers(0, 3, n) for n in counts])
    cells = np.stack([np.eye(3) * 6.0] * 3)
    pbc = np.array([[False] * 3, [True] * 3, [False] * 3])
    fast, slow = _both_paths(monkeypatch, ids, ptr, positions, cells, pbc, numbers=numbers, fn=molecules_from_key)
    _assert_identical(fast, slow)


@pytest.mark.parametrize("n", [SMALL_CONFIG_ATOMS, SMALL_CONFIG_ATOMS + 1])
def test_scipy_only_above_the_threshold(n):
    """A batch of small open configs (here 64 atoms: two waters and isolated O atoms) imports no scipy;
    one of 65 atoms goes through the cKDTree."""
    code = ("import sys, numpy as np\n"
            "from scfdata.reference.molecules import assign_molecules_batch\n"
            f"n = {n}\n"
            "grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing='ij'), -1).reshape(-1, 3)[:n - 4] * 4.0\n"
            "water = np.array([[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0.]])\n"
            "pos = np.r_[water - 10, water - 20, grid]\n"
            "z = np.r_[8, 1, 1, 8, 1, 1, np.full(n - 4, 8)][:n]\n"
            "r = assign_molecules_batch(z, pos[:n], np.array([0, n]), None, None)\n"
            "print(int(r.n_molecules[0]), 'scipy.spatial' in sys.modules, 'scipy.sparse' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(n - 4), str(n > SMALL_CONFIG_ATOMS), str(n > SMALL_CONFIG_ATOMS)], out


def test_the_threshold_is_64_atoms_open_boundary():
    ptr = np.r_[0, np.cumsum([0, 1, 64, 65, 64])]
    pbc = np.array([[False] * 3] * 4 + [[True, False, False]])
    assert mol._small_open_configs(ptr, pbc).tolist() == [True, True, True, False, False]


def test_bond_at_exactly_the_cutoff():
    """d <= cutoff: a pair at exactly the cutoff is bonded, one a rounding step further is not."""
    c = float(_cutoff_table(1.2, None)[8, 1])
    far = np.nextafter(c, np.inf)
    positions = np.array([[0, 0, 0], [c, 0, 0], [0, 0, 0], [far, 0, 0], [0, 0, 0], [0, 0, c]])
    a = assign_molecules_batch(np.array([8, 1, 8, 1, 1, 8]), positions, np.array([0, 2, 4, 6]), None, None)
    assert a.n_molecules.tolist() == [1, 2, 1]


def test_components_fail_loudly_on_wrong_shapes():
    with pytest.raises(IndexError):
        components(3, np.array([0, 5]), np.array([1, 2]))
