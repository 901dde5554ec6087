"""Molecule assignment: connectivity, periodic images, made-whole molecules, extended networks, molID keys.

References are the construction itself (which atoms were put in which molecule, where the molecule was
before wrapping) and ase's own geometry; invariances under translation + re-wrap, rotation, permutation.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list
from scipy.spatial.transform import Rotation

from scfdata.reference.molecules import (
    REASON_EXTENDED,
    _cutoff_table,
    _periodic_bonds,
    assign_molecules,
    assign_molecules_batch,
    molecules_from_key,
    periodic_heights,
)

RNG = np.random.default_rng(7)


def _rotated(name, rng):
    m = molecule(name)
    m.positions -= m.get_center_of_mass()
    m.positions = m.positions @ Rotation.random(random_state=rng.integers(1 << 30)).as_matrix().T
    return m


def water_cluster(n, rng, spacing=3.1):
    """n waters on a jittered cubic grid; atoms in molecule order (O H H)."""
    side = int(np.ceil(n ** (1 / 3)))
    sites = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * spacing
    atoms = Atoms()
    for s in sites:
        w = _rotated("H2O", rng)
        w.positions += s + rng.uniform(-0.1, 0.1, 3)
        atoms += w
    return atoms


def triclinic_water_box(rng):
    """27 waters centred on fractional {0, 1/3, 2/3}^3 of a triclinic cell: 19 of them sit on a face, an edge
    or a corner and are split by wrapping. Returns (wrapped atoms, positions before wrapping)."""
    cell = Atoms(cell=[10.5, 11.0, 11.5, 78.0, 96.0, 104.0]).cell[:]
    fr = np.stack(np.meshgrid(*[np.arange(3) / 3] * 3, indexing="ij"), -1).reshape(-1, 3)
    atoms = Atoms(cell=cell, pbc=True)
    for f in fr:
        w = _rotated("H2O", rng)
        w.positions += f @ cell
        atoms += w
    before = atoms.positions.copy()
    atoms.wrap()
    return atoms, before


def _frac_is_integer(delta, cell, tol=1e-8):
    frac = delta @ np.linalg.inv(cell)
    return np.allclose(frac, np.round(frac), atol=tol)


def _centres(pos, mol):
    n = mol.max() + 1
    return np.stack([pos[mol == m].mean(0) for m in range(n)])


def _canonical(labels):
    """Partition labels relabelled by first appearance (independent reference of the ordering rule)."""
    seen, out = {}, []
    for x in labels:
        seen.setdefault(x, len(seen))
        out.append(seen[x])
    return np.array(out)


# ------------------------------------------------------------------------------------------- clusters


@pytest.mark.parametrize("n", [2, 5, 11, 20])
def test_water_clusters(n):
    a = water_cluster(n, RNG)
    r = assign_molecules(a.numbers, a.positions)
    np.testing.assert_array_equal(r.molecule, np.repeat(np.arange(n), 3))
    assert r.n_molecules.tolist() == [n] and not r.extended[0] and r.reason == [""]
    assert r.formula.tolist() == ["H2O"] * n
    np.testing.assert_array_equal(r.unwrapped_positions, a.positions)


def test_methanol_water_mixture_formulas_and_order():
    rng = np.random.default_rng(1)
    a = Atoms()
    names = ["H2O", "CH3OH", "H2O", "CH3OH", "CH3OH", "H2O"]
    for k, name in enumerate(names):
        m = _rotated(name, rng)
        m.positions += [4.5 * k, 0.3 * k, 0]
        a += m
    r = assign_molecules(a.numbers, a.positions)
    sizes = [len(molecule(x)) for x in names]
    np.testing.assert_array_equal(r.molecule, np.repeat(np.arange(len(names)), sizes))
    assert r.formula.tolist() == ["H2O" if x == "H2O" else "CH4O" for x in names]


def test_ion_in_water():
    """Cl- at a hydrogen-bond distance stays its own molecule; Na+ at 2.4 Å from O is within the default
    covalent cutoff (1.2 (1.66 + 0.66) = 2.78 Å) and joins its shell unless the Na-O pair is overridden."""
    rng = np.random.default_rng(3)
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    for ion, d_ion, expect_default in (("Cl", 3.1, 7), ("Na", 2.4, 1)):
        a = Atoms(ion, positions=[[0, 0, 0]])
        for u in dirs:
            w = _rotated("H2O", rng)
            w.positions += -w.positions[0] + u * d_ion  # O at d_ion from the ion
            # point the hydrogens away from the ion so no H-ion contact
            w.positions[1:] = w.positions[0] + np.abs(w.positions[1:] - w.positions[0]) * np.sign(u.sum())
            a += w
        r = assign_molecules(a.numbers, a.positions)
        assert r.n_molecules[0] == expect_default
        r2 = assign_molecules(a.numbers, a.positions, pair_overrides={f"{ion}-O": 0.0, (ion, "H"): 0.0})
        assert r2.n_molecules[0] == 7 and r2.formula[0] == ion and r2.formula[1:].tolist() == ["H2O"] * 6
        # the tuple key means the same as the string key, in either order
        r3 = assign_molecules(a.numbers, a.positions, pair_overrides={("O", ion): 0.0, ("H", ion): 0.0})
        np.testing.assert_array_equal(r3.molecule, r2.molecule)


# ------------------------------------------------------------------------------------------- periodic


def test_triclinic_box_split_everywhere_made_whole():
    a, before = triclinic_water_box(np.random.default_rng(0))
    cell = a.cell[:]
    # sanity of the fixture: molecules really are split by the wrapping, and not too close to each other
    mol = np.repeat(np.arange(27), 3)
    split = [not np.allclose(a.positions[mol == m], before[mol == m]) for m in range(27)]
    assert sum(split) >= 19
    r = assign_molecules(a.numbers, a.positions, cell, True)
    np.testing.assert_array_equal(r.molecule, mol)
    assert r.n_molecules[0] == 27 and not r.extended[0] and r.reason == [""]
    u = r.unwrapped_positions
    # whole: every molecule is the molecule before wrapping up to one lattice vector
    for m in range(27):
        d = u[mol == m] - before[mol == m]
        assert np.allclose(d, d[0], atol=1e-9) and _frac_is_integer(d[:1], cell)
    # each unwrapped atom is its wrapped self plus a lattice vector
    assert _frac_is_integer(u - a.positions, cell)
    # unwrapped centres equal the centres before wrapping, modulo a lattice vector
    assert _frac_is_integer(_centres(u, mol) - _centres(before, mol), cell)
    # the naive centre of a split molecule (mean of wrapped coordinates) is not
    naive = _centres(a.positions, mol)
    assert not _frac_is_integer(naive - _centres(before, mol), cell, tol=1e-3)


def test_positions_outside_the_cell_are_fine():
    a, before = triclinic_water_box(np.random.default_rng(4))
    shifted = a.positions + np.array([2, -3, 1]) @ a.cell[:]
    r = assign_molecules(a.numbers, shifted, a.cell[:], True)
    np.testing.assert_array_equal(r.molecule, np.repeat(np.arange(27), 3))
    mol = r.molecule
    assert _frac_is_integer(_centres(r.unwrapped_positions, mol) - _centres(before, mol), a.cell[:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_translation_rotation_permutation_invariance(seed):
    rng = np.random.default_rng(seed)
    a, before = triclinic_water_box(rng)
    cell = a.cell[:]
    mol = np.repeat(np.arange(27), 3)
    ref = assign_molecules(a.numbers, a.positions, cell, True)
    ref_c = _centres(ref.unwrapped_positions, mol)

    # translation by an arbitrary vector, then re-wrapping
    t = rng.normal(size=3) * 7
    b = a.copy()
    b.positions += t
    b.wrap()
    r = assign_molecules(b.numbers, b.positions, cell, True)
    np.testing.assert_array_equal(r.molecule, ref.molecule)
    assert _frac_is_integer(_centres(r.unwrapped_positions, mol) - ref_c - t, cell)

    # rotation of positions and cell together
    R = Rotation.random(random_state=seed).as_matrix()
    r = assign_molecules(a.numbers, a.positions @ R.T, cell @ R.T, True)
    np.testing.assert_array_equal(r.molecule, ref.molecule)
    assert _frac_is_integer(_centres(r.unwrapped_positions, mol) - ref_c @ R.T, cell @ R.T, tol=1e-7)

    # permutation of the atoms: same partition, molecules numbered by first appearance in the new order
    perm = rng.permutation(len(a))
    r = assign_molecules(a.numbers[perm], a.positions[perm], cell, True)
    np.testing.assert_array_equal(r.molecule, _canonical(ref.molecule[perm]))
    u_back = np.empty_like(r.unwrapped_positions)
    u_back[perm] = r.unwrapped_positions
    mol_back = np.empty_like(r.molecule)
    mol_back[perm] = r.molecule
    for m in range(27):
        d = u_back[mol == m] - ref.unwrapped_positions[mol == m]  # same molecule, maybe another image
        assert np.allclose(d, d[0]) and _frac_is_integer(d[:1], cell)
    assert sorted(r.formula.tolist()) == sorted(ref.formula.tolist())


def _oracle_cases():
    box, _ = triclinic_water_box(np.random.default_rng(12))
    box.positions += np.array([1, -2, 3]) @ box.cell[:]  # positions given outside the cell
    slab = fcc111("Al", size=(2, 3, 3), vacuum=6.0)
    slab.positions[:, :2] += 0.3
    nacl = bulk("NaCl", "rocksalt", a=5.64)  # primitive cell thinner than the cutoff: many images
    tiny = molecule("H2O")
    tiny.set_cell([[1.3, 0, 0], [0.4, 1.4, 0], [0, 0, 0]])
    tiny.pbc = [True, True, False]  # zero third vector in the open direction
    wire = Atoms("C6", positions=[[1.5 * k, 0.1 * k, 0] for k in range(6)], cell=[[9.0, 0.5, 0], [0, 0, 0],
                 [0, 0, 0]], pbc=[True, False, False])
    thin = Atoms("OH", positions=[[0.1, 0.2, 0.3], [0.5, 0.4, 0.2]],
                 cell=[[0.6, 0, 0], [0.2, 0.7, 0], [0.1, 0.1, 0.8]], pbc=True)  # heights ~0.5 Å: ~7^3 images
    return {"triclinic water": (box, 1.2), "Al slab": (slab, 1.2), "NaCl primitive": (nacl, 1.2),
            "tiny 2D": (tiny, 1.2), "1D wire": (wire, 1.2), "water joined": (box, 3.0), "0.5 Å cell": (thin, 1.2)}


@pytest.mark.parametrize("case", list(_oracle_cases()))
def test_periodic_bonds_equal_ase_neighbor_list(case):
    a, scale = _oracle_cases()[case]
    table = _cutoff_table(scale, None)
    i, j, S = _periodic_bonds(a.numbers, a.positions, a.cell[:], a.pbc, table)
    z = a.numbers
    ri, rj, rd, rS = neighbor_list("ijdS", a, float(table[np.ix_(np.unique(z), np.unique(z))].max()))
    keep = (rd <= table[z[ri], z[rj]]) & (ri <= rj)
    ref = {(int(x), int(y), *map(int, s)) for x, y, s in zip(ri[keep], rj[keep], rS[keep])}
    got = {(int(x), int(y), *map(int, s)) for x, y, s in zip(i, j, S)}
    assert len(got) == len(i) and got == ref and len(ref) > 0
    D = a.positions[j] - a.positions[i] + S @ a.cell[:]
    assert np.all(np.linalg.norm(D, axis=1) <= table[z[i], z[j]] + 1e-12)


@pytest.mark.parametrize("symbol,refused", [("O", True), ("H", False)])
def test_degenerate_cell_is_bounded(symbol, refused):
    """Issue 14: a 1-atom TTT frame in a 0.05 Å cube ran > 120 s and reached 17 GB. Now a cell that needs more
    than MAX_IMAGE_CELLS image cells is refused in well under a second; one just below the cap (H: 31^3 cells)
    finishes with the memory of its ~30,000 image atoms (no ghost-ghost pairs)."""
    import time
    import tracemalloc

    a = Atoms(symbol, positions=[[0.01, 0.02, 0.03]], cell=np.eye(3) * 0.05, pbc=True)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        if refused:
            with pytest.raises(ValueError, match=r"config 0: periodic cell too small .* heights \[0\.05, 0\.05, "
                                                 r"0\.05\] Å need \d+ image cells"):
                assign_molecules(a.numbers, a.positions, a.cell[:], a.pbc)
        else:
            r = assign_molecules(a.numbers, a.positions, a.cell[:], a.pbc)
            assert r.extended.all() and r.n_molecules.tolist() == [1]  # bonded to its own images
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10 and peak < 200e6, (time.perf_counter() - t0, peak)


def test_periodic_heights_of_bulk_slab_and_wire():
    cell = np.array([[4.0, 0, 0], [1.0, 5.0, 0], [0.5, 0.5, 6.0]])
    h = periodic_heights(cell, [True, True, True])
    vol = abs(np.linalg.det(cell))
    np.testing.assert_allclose(h, [vol / np.linalg.norm(np.cross(cell[1], cell[2])),
                                   vol / np.linalg.norm(np.cross(cell[2], cell[0])), 6.0])
    # slab: the 2D lattice's heights (area / other vector length), whatever the third vector
    np.testing.assert_allclose(periodic_heights(cell, [True, True, False]), [20 / np.hypot(1, 5), 5.0, np.inf])
    np.testing.assert_allclose(periodic_heights(cell, [True, False, False]), [4.0, np.inf, np.inf])
    assert np.all(np.isinf(periodic_heights(cell, [False] * 3)))


def test_nacl_crystal_is_extended_not_split():
    a = bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2)
    r = assign_molecules(a.numbers, a.positions, a.cell[:], a.pbc)
    assert r.extended[0] and r.n_molecules[0] == 1
    assert r.reason == [REASON_EXTENDED]
    assert r.formula.tolist() == ["Cl8Na8"]


def test_polymer_through_the_cell_vs_chain_with_a_gap():
    n, d = 8, 1.5
    chain = Atoms("C8", positions=[[d * k, 0, 0] for k in range(n)], cell=np.diag([n * d, 10, 10]), pbc=True)
    r = assign_molecules(chain.numbers, chain.positions, chain.cell[:], True)
    assert r.extended[0] and r.n_molecules[0] == 1
    gap = chain.copy()
    gap.set_cell(np.diag([n * d + 3.0, 10, 10]))
    gap.positions += [-3.5 * d, 0, 0]  # the chain now crosses x = 0
    gap.wrap()
    r = assign_molecules(gap.numbers, gap.positions, gap.cell[:], True)
    assert not r.extended[0] and r.n_molecules[0] == 1 and r.reason == ["single molecule"]
    u = r.unwrapped_positions
    np.testing.assert_allclose(np.diff(np.sort(u[:, 0])), d, atol=1e-9)  # whole, contiguous chain


def test_water_on_a_metal_slab():
    slab = fcc111("Al", size=(3, 3, 3), vacuum=8.0)
    assert tuple(slab.pbc) == (True, True, False)
    top = slab.positions[:, 2].max()
    rng = np.random.default_rng(5)
    n_w = 4
    cell = slab.cell[:]
    for k in range(n_w):
        w = _rotated("H2O", rng)
        # the first water sits on the x = 0 boundary, so wrapping splits it
        w.positions += np.array([k / n_w, 0.5 * (k % 2), 0]) @ cell + [0, 0, top + 3.2]
        slab += w
    before = slab.positions.copy()
    slab.wrap()
    r = assign_molecules(slab.numbers, slab.positions, slab.cell[:], slab.pbc)
    n_al = 27
    assert r.extended[0]  # the metal bonds to its own images: molecular targets of this config are masked
    assert r.n_molecules[0] == 1 + n_w
    assert r.formula.tolist() == ["Al27"] + ["H2O"] * n_w
    np.testing.assert_array_equal(r.molecule[n_al:], np.repeat(np.arange(1, n_w + 1), 3))
    mol = r.molecule
    wc = _centres(r.unwrapped_positions, mol)[1:]
    assert _frac_is_integer(wc - _centres(before, mol)[1:], cell)
    # the same waters in the same slab cell without the metal: fine, not extended
    water = slab[n_al:]
    r = assign_molecules(water.numbers, water.positions, water.cell[:], water.pbc)
    assert not r.extended[0] and r.reason == [""] and r.n_molecules[0] == n_w


def test_molecule_bonded_to_its_own_image_in_a_tiny_cell():
    w = molecule("H2O")
    r = assign_molecules(w.numbers, w.positions, np.diag([1.4, 10, 10]), [True, False, False])
    assert r.extended[0]


# ------------------------------------------------------------------------------------------- batches


def test_batch_equals_per_config_loop_mixed_boundaries():
    rng = np.random.default_rng(11)
    configs = []
    for k in range(30):
        if k % 7 == 3:
            a, _ = triclinic_water_box(rng)
            configs.append((a, a.cell[:], [True] * 3))
        elif k % 7 == 5:
            a = bulk("NaCl", "rocksalt", a=5.64)
            configs.append((a, a.cell[:], [True] * 3))
        else:
            a = water_cluster(int(rng.integers(1, 8)), rng)
            a.positions += rng.normal(size=3) * 2  # overlapping clusters in space: must not bond across configs
            configs.append((a, np.zeros((3, 3)), [False] * 3))
    ptr = np.r_[0, np.cumsum([len(a) for a, _, _ in configs])]
    batch = assign_molecules_batch(np.concatenate([a.numbers for a, _, _ in configs]),
                                   np.concatenate([a.positions for a, _, _ in configs]), ptr,
                                   np.stack([c for _, c, _ in configs]), np.array([p for _, _, p in configs]))
    mol_ptr = batch.molecule_ptr
    for k, (a, c, p) in enumerate(configs):
        one = assign_molecules(a.numbers, a.positions, c, p)
        s = slice(ptr[k], ptr[k + 1])
        np.testing.assert_array_equal(batch.molecule[s], one.molecule)
        np.testing.assert_allclose(batch.unwrapped_positions[s], one.unwrapped_positions)
        assert batch.n_molecules[k] == one.n_molecules[0] and batch.extended[k] == one.extended[0]
        assert batch.reason[k] == one.reason[0]
        assert batch.formula[mol_ptr[k]:mol_ptr[k + 1]].tolist() == one.formula.tolist()


def test_empty_config_in_a_batch():
    w = molecule("H2O")
    r = assign_molecules_batch(np.r_[w.numbers, w.numbers], np.r_[w.positions, w.positions], [0, 3, 3, 6],
                               None, None)
    assert r.n_molecules.tolist() == [1, 0, 1] and r.reason[1] == "no atoms"
    assert r.molecule.tolist() == [0, 0, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("z, name", [(0, "X"), (100, "Fm")])
def test_unknown_covalent_radius(z, name):
    w = molecule("H2O")
    numbers = np.r_[w.numbers, w.numbers]
    numbers[4] = z
    with pytest.raises(ValueError, match=rf"element {name} .*config 1"):
        assign_molecules_batch(numbers, np.r_[w.positions, w.positions + 5], [0, 3, 6], None, None)


def test_scale_that_joins_everything_is_reported():
    a = water_cluster(8, np.random.default_rng(2))
    r = assign_molecules(a.numbers, a.positions, covalent_scale=3.0)
    assert r.n_molecules[0] == 1
    assert "whole system joined into one molecule by covalent_scale=3" in r.reason[0]
    assert "8 molecules at the default 1.2" in r.reason[0]
    box, _ = triclinic_water_box(np.random.default_rng(0))
    r = assign_molecules(box.numbers, box.positions, box.cell[:], True, covalent_scale=3.0)
    assert r.extended[0] and r.reason[0].startswith(REASON_EXTENDED) and "27 molecules" in r.reason[0]


def test_bad_settings():
    w = molecule("H2O")
    with pytest.raises(ValueError, match="covalent_scale"):
        assign_molecules(w.numbers, w.positions, covalent_scale=-1)
    with pytest.raises(ValueError, match="not an element"):
        assign_molecules(w.numbers, w.positions, pair_overrides={"O-Xx": 1.0})
    with pytest.raises(ValueError, match="element pairs"):
        assign_molecules(w.numbers, w.positions, pair_overrides={"O": 1.0})
    with pytest.raises(ValueError, match="positions"):
        assign_molecules(w.numbers, w.positions[:2])


# ------------------------------------------------------------------------------------------- source: key


def test_key_relabels_by_first_appearance_per_config():
    r = molecules_from_key(np.array([5, 5, 2, 2, 7, 3, 3, 0]), [0, 5, 8])
    assert r.molecule.tolist() == [0, 0, 1, 1, 2, 0, 0, 1]
    assert r.n_molecules.tolist() == [3, 2] and r.reason == ["", ""]
    r = molecules_from_key(np.array([1.0, 1.0, 4.0]), [0, 3])  # integral floats are fine
    assert r.molecule.tolist() == [0, 0, 1]


@pytest.mark.parametrize("ids, match", [
    (np.zeros(7, int), r"expected one id per atom, 8 .* found an array of shape \(7,\).*config 1"),
    (np.array([0, 0, 1, 1, 2, 0, 0.5, 1]), r"expected integer .* 0.5 at atom 1 of config 1"),
    (np.array([0, 0, 1, 1, 2, 0, -1, 1]), r"non-negative .* -1 at atom 1 of config 1"),
    (np.array(["a"] * 8), "expected integer"),
])
def test_key_bad_input(ids, match):
    with pytest.raises(ValueError, match=match):
        molecules_from_key(ids, [0, 5, 8])


@pytest.mark.parametrize("with_numbers", [True, False])
def test_key_unwraps_like_connectivity(with_numbers):
    a, before = triclinic_water_box(np.random.default_rng(9))
    ids = 100 - np.repeat(np.arange(27), 3)  # arbitrary user ids
    conn = assign_molecules(a.numbers, a.positions, a.cell[:], True)
    r = molecules_from_key(ids, [0, len(a)], a.positions, a.cell[:][None], np.ones((1, 3), bool),
                           numbers=a.numbers if with_numbers else None)
    np.testing.assert_array_equal(r.molecule, conn.molecule)
    mol = r.molecule
    assert _frac_is_integer(_centres(r.unwrapped_positions, mol) - _centres(before, mol), a.cell[:])
    assert r.formula.tolist() == (["H2O"] * 27 if with_numbers else [""] * 27)


def test_key_extended_detected_with_numbers():
    a = bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2)
    r = molecules_from_key(np.zeros(len(a), int), [0, len(a)], a.positions, a.cell[:][None], [[True] * 3],
                           numbers=a.numbers)
    assert r.extended[0] and r.reason == [REASON_EXTENDED]
