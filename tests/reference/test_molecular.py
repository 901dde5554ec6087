"""Molecular forces, centres, cluster virials and masks, against direct loops and real (LJ) forces."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.lj import LennardJones
from ase.data import atomic_masses
from scipy.spatial.transform import Rotation

from scfdata.reference.molecular import (
    REASON_EXTENDED,
    REASON_PERIODIC,
    REASON_SINGLE,
    atomic_virial_from_stress,
    cluster_virial,
    molecular_forces,
    molecular_masks,
    molecular_virial_from_stress,
    molecule_centres,
)
from scfdata.reference.molecules import assign_molecules, assign_molecules_batch


def _random_batch(rng, n_configs=6):
    n_mol = rng.integers(1, 6, n_configs)
    mol_sizes = [rng.integers(1, 5, m) for m in n_mol]
    n_atoms = np.array([s.sum() for s in mol_sizes])
    glob = np.repeat(np.arange(n_mol.sum()), np.concatenate(mol_sizes))
    perm = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in
                           zip(np.r_[0, np.cumsum(n_atoms)[:-1]], np.cumsum(n_atoms))])
    glob = glob[perm]  # atoms of a molecule need not be contiguous
    N, M = n_atoms.sum(), n_mol.sum()
    return dict(n_mol=n_mol, n_atoms=n_atoms, glob=glob, N=N, M=M, ptr=np.r_[0, np.cumsum(n_atoms)],
                mol_config=np.repeat(np.arange(n_configs), n_mol),
                pos=rng.normal(size=(N, 3)) * 4, forces=rng.normal(size=(N, 3)), masses=rng.uniform(1, 40, N))


def test_molecular_forces_and_centres_against_loops():
    b = _random_batch(np.random.default_rng(0))
    fm = molecular_forces(b["forces"], b["glob"], b["M"])
    geo = molecule_centres(b["pos"], b["glob"], b["M"])
    com = molecule_centres(b["pos"], b["glob"], b["M"], masses=b["masses"], centre="mass")
    for m in range(b["M"]):
        sel = b["glob"] == m
        np.testing.assert_allclose(fm[m], sum(b["forces"][k] for k in np.nonzero(sel)[0]), atol=1e-12)
        np.testing.assert_allclose(geo[m], b["pos"][sel].mean(0), atol=1e-12)
        w = b["masses"][sel]
        np.testing.assert_allclose(com[m], (b["pos"][sel] * w[:, None]).sum(0) / w.sum(), atol=1e-12)
    # sum over molecules = total force of each config
    atom_cfg = np.repeat(np.arange(len(b["n_atoms"])), b["n_atoms"])
    for c in range(len(b["n_atoms"])):
        np.testing.assert_allclose(fm[b["mol_config"] == c].sum(0), b["forces"][atom_cfg == c].sum(0), atol=1e-12)


def test_cluster_virial_against_loop_and_origin():
    b = _random_batch(np.random.default_rng(1))
    fm = molecular_forces(b["forces"], b["glob"], b["M"])
    R = molecule_centres(b["pos"], b["glob"], b["M"])
    w = cluster_virial(R, fm, b["mol_config"], len(b["n_mol"]))
    direct = [sum(float(R[m] @ fm[m]) for m in np.nonzero(b["mol_config"] == c)[0]) for c in range(len(b["n_mol"]))]
    np.testing.assert_allclose(w, direct, atol=1e-12)
    # moving the origin by o changes W by o . (net force): nonzero here, the test can fail
    o = np.array([3.0, -2.0, 5.0])
    w_o = cluster_virial(R + o, fm, b["mol_config"], len(b["n_mol"]))
    net = np.stack([fm[b["mol_config"] == c].sum(0) for c in range(len(b["n_mol"]))])
    np.testing.assert_allclose(w_o - w, net @ o, atol=1e-10)


def _lj_water_cluster(n, seed, cell=None):
    rng = np.random.default_rng(seed)
    a = Atoms()
    for k in range(n):
        w = molecule("H2O")
        w.positions = w.positions @ Rotation.random(random_state=seed * 100 + k).as_matrix().T
        w.positions += np.array([k % 3, (k // 3) % 3, k // 9]) * 3.0 + rng.uniform(-0.2, 0.2, 3)
        a += w
    if cell is not None:
        a.set_cell(cell)
        a.pbc = True
    a.calc = LennardJones(sigma=2.0, epsilon=0.05, rc=6.0, smooth=True)
    return a


@pytest.mark.parametrize("n", [2, 7, 20])
def test_isolated_cluster_virial_is_origin_independent_and_rotation_invariant(n):
    a = _lj_water_cluster(n, n)
    F = a.get_forces()
    r = assign_molecules(a.numbers, a.positions)
    glob = r.molecule
    M = int(r.n_molecules[0])
    assert M == n
    fm = molecular_forces(F, glob, M)
    scale = np.abs(F).sum()
    np.testing.assert_allclose(fm.sum(0), F.sum(0), atol=1e-14 * scale)
    np.testing.assert_allclose(F.sum(0), 0, atol=1e-13 * scale)  # an isolated cluster: no net force
    for centre in ("geometric", "mass"):
        R = molecule_centres(r.unwrapped_positions, glob, M, masses=atomic_masses[a.numbers], centre=centre)
        w = cluster_virial(R, fm, np.zeros(M, int), 1)
        for o in (np.array([10.0, -7.0, 3.0]), np.array([-100.0, 50.0, 20.0])):
            b = a.copy()
            b.positions += o
            b.calc = a.calc
            rb = assign_molecules(b.numbers, b.positions)
            Rb = molecule_centres(rb.unwrapped_positions, rb.molecule, M, masses=atomic_masses[b.numbers],
                                  centre=centre)
            np.testing.assert_allclose(cluster_virial(Rb, molecular_forces(b.get_forces(), rb.molecule, M),
                                                      np.zeros(M, int), 1), w, rtol=1e-9, atol=1e-9)
        rot = Rotation.random(random_state=n).as_matrix()
        np.testing.assert_allclose(cluster_virial(R @ rot.T, fm @ rot.T, np.zeros(M, int), 1), w, atol=1e-10)
    assert abs(w[0]) > 1e-4  # not trivially zero


def test_stress_sign_and_image_independent_molecular_virial():
    """A cluster in a periodic box larger than the LJ cutoff: -V tr(σ) = Σ r·F (ase sign convention) and
    W_mol from the stress equals the open-boundary Σ_M R_M · F_M; moving one molecule by a lattice vector
    changes Σ R·F (the reason periodic W is masked) but not W_mol."""
    cell = np.array([[25.0, 0, 0], [3.0, 24.0, 0], [-2.0, 1.5, 26.0]])
    a = _lj_water_cluster(9, 4, cell=cell)
    a.positions += [6, 6, 6]
    F, stress = a.get_forces(), a.get_stress(voigt=False)
    w_atomic = atomic_virial_from_stress(stress[None], cell[None])
    np.testing.assert_allclose(w_atomic, np.einsum("ak,ak->", a.positions, F), rtol=1e-9)
    voigt = a.get_stress()
    np.testing.assert_allclose(atomic_virial_from_stress(voigt[None], cell[None]), w_atomic, rtol=1e-12)
    r = assign_molecules(a.numbers, a.positions, cell, True)
    M = int(r.n_molecules[0])
    R = molecule_centres(r.unwrapped_positions, r.molecule, M)
    fm = molecular_forces(F, r.molecule, M)
    w_open = cluster_virial(R, fm, np.zeros(M, int), 1)
    w_mol = molecular_virial_from_stress(stress[None], cell[None], r.unwrapped_positions, F, r.molecule, R,
                                         [0, len(a)])
    np.testing.assert_allclose(w_mol, w_open, rtol=1e-9)
    # one molecule replaced by its periodic image: same physics, different Σ R·F, same W_mol
    moved = r.unwrapped_positions.copy()
    moved[r.molecule == 2] += cell[0] - cell[2]
    R2 = molecule_centres(moved, r.molecule, M)
    assert abs(cluster_virial(R2, fm, np.zeros(M, int), 1)[0] - w_open[0]) > 1e-3
    w_mol2 = molecular_virial_from_stress(stress[None], cell[None], moved, F, r.molecule, R2, [0, len(a)])
    np.testing.assert_allclose(w_mol2, w_mol, rtol=1e-9)


def test_batched_cluster_virial_matches_single_configs():
    clusters = [_lj_water_cluster(n, 10 + n) for n in (2, 3, 5, 8)]
    ptr = np.r_[0, np.cumsum([len(a) for a in clusters])]
    r = assign_molecules_batch(np.concatenate([a.numbers for a in clusters]),
                               np.concatenate([a.positions for a in clusters]), ptr, None, None)
    F = np.concatenate([a.get_forces() for a in clusters])
    mol_ptr = r.molecule_ptr
    glob = r.molecule + np.repeat(mol_ptr[:-1], np.diff(ptr))
    M = int(mol_ptr[-1])
    w = cluster_virial(molecule_centres(r.unwrapped_positions, glob, M), molecular_forces(F, glob, M),
                       np.repeat(np.arange(len(clusters)), r.n_molecules), len(clusters))
    for k, a in enumerate(clusters):
        one = assign_molecules(a.numbers, a.positions)
        m = int(one.n_molecules[0])
        ref = cluster_virial(molecule_centres(a.positions, one.molecule, m),
                             molecular_forces(a.get_forces(), one.molecule, m), np.zeros(m, int), 1)
        np.testing.assert_allclose(w[k], ref[0], rtol=1e-12)


def test_torch_inputs_match_numpy_and_differentiate():
    b = _random_batch(np.random.default_rng(3))
    pos = torch.tensor(b["pos"], requires_grad=True)
    f = torch.tensor(b["forces"], requires_grad=True)
    fm = molecular_forces(f, torch.tensor(b["glob"]), b["M"])
    R = molecule_centres(pos, b["glob"], b["M"], masses=torch.tensor(b["masses"]), centre="mass")
    w = cluster_virial(R, fm, b["mol_config"], len(b["n_mol"]))
    ref = cluster_virial(molecule_centres(b["pos"], b["glob"], b["M"], masses=b["masses"], centre="mass"),
                         molecular_forces(b["forces"], b["glob"], b["M"]), b["mol_config"], len(b["n_mol"]))
    np.testing.assert_allclose(w.detach().numpy(), ref, atol=1e-12)
    w.sum().backward()
    # dW/dF_i = R_M(i)
    np.testing.assert_allclose(f.grad.numpy(), R.detach().numpy()[b["glob"]], atol=1e-12)


def test_masks():
    n_mol = np.array([5, 1, 4, 3, 0])
    ext = np.array([False, False, True, False, False])
    pbc = np.array([[False] * 3, [False] * 3, [True] * 3, [True, True, False], [False] * 3])
    mask, why = molecular_masks(n_mol, ext, pbc)
    assert mask.tolist() == [True, False, False, False, False]
    assert why == ["", REASON_SINGLE, REASON_EXTENDED, REASON_PERIODIC, REASON_SINGLE]
    mask, why = molecular_masks(n_mol, ext, pbc, target="molecular_forces")
    assert mask.tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match="Must be one of"):
        molecular_masks(n_mol, ext, pbc, target="virial")


def test_bad_input():
    with pytest.raises(ValueError, match=r"molecule_global must lie in 0..1"):
        molecular_forces(np.zeros((3, 3)), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match=r"forces must have shape \(n, 3\)"):
        molecular_forces(np.zeros((3, 2)), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="at least one atom; molecules \\[1\\]"):
        molecule_centres(np.zeros((3, 3)), np.array([0, 0, 2]), 3)
    with pytest.raises(ValueError, match="needs masses"):
        molecule_centres(np.zeros((3, 3)), np.array([0, 0, 1]), 2, centre="mass")
    with pytest.raises(ValueError, match="Unknown centre"):
        molecule_centres(np.zeros((3, 3)), np.array([0, 0, 1]), 2, centre="com")
    with pytest.raises(ValueError, match="volume > 0"):
        atomic_virial_from_stress(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))
