"""Every loss against a plain numpy implementation (explicit loops over configs, atoms, molecules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import data_losses, make_numpy_batch, select_configs, to_torch

from scfdata.losses import LOSSES
from scfdata.losses import terms as T
from scfdata.losses.batch import LossInputError


def numpy_loss(name: str, ref: dict, pred: dict) -> float:
    """Σ w e² / #(entries with w ≠ 0), written entry by entry."""
    ptr, mptr = ref["ptr"], ref["molecule_ptr"]
    B = len(ptr) - 1
    per_atom = name.endswith("_per_atom")
    field = name.removesuffix("_per_atom")  # energy_per_atom -> energy
    num, count = 0.0, 0

    def add(w, e):
        nonlocal num, count
        if w != 0:
            num += w * e * e
            count += 1

    for b in range(B):
        n = ptr[b + 1] - ptr[b]
        atoms = range(ptr[b], ptr[b + 1])
        mols = range(mptr[b], mptr[b + 1])
        m = ref[f"{field}_mask"][b]
        pw = ref[f"{field}_weight"][b]
        w = ref["weight"][b] * pw * m  # (3,) for the dipole
        div = n if per_atom else 1
        if field in ("energy", "fermi_level"):
            add(w, (ref[field][b] - pred[field][b]) / div)
        elif field in ("stress", "polarizability"):
            for a in range(3):
                for c in range(3):
                    add(w, ref[field][b, a, c] - pred[field][b, a, c])
        elif field == "dipole":
            for c in range(3):
                add(w[c], (ref["dipole"][b, c] - pred["dipole"][b, c]) / div)
        elif field == "total_charge":
            q = sum(pred["density_coefficients"][i, 0] for i in atoms)
            add(w, (ref["total_charge"][b] - q) / div)
        elif field == "forces":
            for i in atoms:
                for c in range(3):
                    add(w, ref["forces"][i, c] - pred["forces"][i, c])
        elif field == "atomic_multipoles":
            k = pred["density_coefficients"].shape[1]
            for i in atoms:
                for j in range(k):
                    add(w, ref["atomic_multipoles"][i, j] - pred["density_coefficients"][i, j])
        elif field == "esps":
            for i in atoms:
                add(w, ref["esps"][i] - pred["esps"][i])
        elif field == "molecular_forces":
            for M in mols:
                f_hat = sum((pred["forces"][i] for i in atoms if ref["molecule"][i] == M), np.zeros(3))
                for c in range(3):
                    add(w, ref["molecular_forces"][M, c] - f_hat[c])
        elif field == "cluster_virial":
            W_hat = 0.0
            for M in mols:
                f_hat = sum((pred["forces"][i] for i in atoms if ref["molecule"][i] == M), np.zeros(3))
                W_hat += float(np.dot(ref["molecule_centre"][M], f_hat))
            add(w, (ref["cluster_virial"][b] - W_hat) / div)
        else:
            raise AssertionError(name)
    return num / count if count else 0.0


@pytest.mark.parametrize("name", data_losses())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy(name, seed):
    ref, pred = make_numpy_batch(seed)
    expected = numpy_loss(name, ref, pred)
    got = LOSSES[name].fn(to_torch(ref), to_torch(pred))
    assert got.dtype == torch.float64 and got.shape == ()
    assert np.isfinite(expected)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("name", data_losses())
def test_float32(name):
    ref, pred = make_numpy_batch(5)
    got = LOSSES[name].fn(to_torch(ref, torch.float32), to_torch(pred, torch.float32))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_loss(name, ref, pred), rel=1e-4)


@pytest.mark.parametrize("name", data_losses())
def test_batch_order_invariance(name):
    ref, pred = make_numpy_batch(3, n_configs=9)
    perm = np.random.default_rng(0).permutation(9)
    ref_p, pred_p = select_configs(ref, pred, perm)
    a = LOSSES[name].fn(to_torch(ref), to_torch(pred)).item()
    b = LOSSES[name].fn(to_torch(ref_p), to_torch(pred_p)).item()
    assert a > 0
    assert b == pytest.approx(a, rel=1e-12)


@pytest.mark.parametrize("name", data_losses())
def test_zero_weight_config_contributes_nothing(name):
    """Zero config weight == config removed from the batch (sum and count), whatever its targets."""
    ref, pred = make_numpy_batch(4, n_configs=8, p_absent=0.0)
    ref["weight"][:] = 1.0
    for k in list(ref):
        if k.endswith("_weight"):
            ref[k][:] = 1.0
    ref["weight"][2] = 0.0
    lo, hi = ref["ptr"][2], ref["ptr"][3]
    ref["forces"][lo:hi] = 1e6  # a wild target that must not matter
    ref["energy"][2] = -1e6
    keep = [0, 1, 3, 4, 5, 6, 7]
    ref_k, pred_k = select_configs(ref, pred, keep)
    a = LOSSES[name].fn(to_torch(ref), to_torch(pred)).item()
    b = LOSSES[name].fn(to_torch(ref_k), to_torch(pred_k)).item()
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("name", data_losses())
def test_all_absent_is_zero_with_finite_grad(name):
    ref, pred = make_numpy_batch(6)
    for k in list(ref):
        if k.endswith("_mask"):
            ref[k][:] = False
    p = to_torch(pred, requires_grad=True)
    loss = LOSSES[name].fn(to_torch(ref), p)
    assert loss.item() == 0.0
    loss.backward()
    for v in p.values():
        assert v.grad is None or (torch.isfinite(v.grad).all() and (v.grad == 0).all())


@pytest.mark.parametrize("name", ["cluster_virial", "cluster_virial_per_atom", "molecular_forces", "esps"])
def test_nan_stored_where_absent_never_reaches_loss_or_grad(name):
    """Absent targets and the molecule centres of configs without a virial target may be NaN (MACE_SCF
    batches, other writers): the loss and its gradient stay the values computed with zeros there."""
    ref, pred = make_numpy_batch(7, n_configs=6, p_absent=0.0)
    field = name.removesuffix("_per_atom")
    ref[f"{field}_mask"][1] = False
    clean = to_torch(ref)
    lo, hi = ref["molecule_ptr"][1], ref["molecule_ptr"][2]
    ref["molecule_centre"][lo:hi] = np.nan
    ref["molecular_forces"][lo:hi] = np.nan
    ref["esps"][ref["ptr"][1]:ref["ptr"][2]] = np.nan
    ref["cluster_virial"][1] = np.nan
    p = to_torch(pred, requires_grad=True)
    loss = LOSSES[name].fn(to_torch(ref), p)
    loss.backward()
    want = LOSSES[name].fn(clean, to_torch(pred)).item()
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(want, rel=1e-12)
    assert all(v.grad is None or torch.isfinite(v.grad).all() for v in p.values())


@pytest.mark.parametrize("name", ["forces", "total_charge_per_atom", "dipole_per_atom", "atomic_multipoles",
                                  "molecular_forces", "cluster_virial_per_atom", "energy_per_atom"])
def test_gradcheck(name):
    ref, pred = make_numpy_batch(7, n_configs=4)
    ref_t = to_torch(ref)
    spec = LOSSES[name]
    keys = sorted({"density_coefficients" if o == "density_coefficients" else o for o in spec.outputs})
    base = to_torch(pred)
    inputs = tuple(base[k].clone().requires_grad_(True) for k in keys)

    def f(*xs):
        return spec.fn(ref_t, {**base, **dict(zip(keys, xs, strict=True))})

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_gradient_of_forces_matches_formula():
    """d/dF̂ of Σ w (F − F̂)² / n = −2 w (F − F̂) / n on present entries, 0 elsewhere."""
    ref, pred = make_numpy_batch(8)
    p = to_torch(pred, requires_grad=True)
    T.forces(to_torch(ref), p).backward()
    w = (ref["weight"] * ref["forces_weight"] * ref["forces_mask"])[ref["batch"]][:, None]
    n = 3 * np.count_nonzero(w)
    diff = np.where(w != 0, ref["forces"] - pred["forces"], 0.0)
    np.testing.assert_allclose(p["forces"].grad.numpy(), -2 * w * diff / n, rtol=1e-12, atol=1e-15)


def test_mace_scf_names_and_masks_from_weights():
    """electrostatic_potentials / density_coefficients; no _mask -> weight != 0 (cluster_batch, local
    per config, is in test_mace_scf.py)."""
    ref, pred = make_numpy_batch(9)
    expected = {n: numpy_loss(n, ref, pred) for n in ("esps", "atomic_multipoles")}
    mace = dict(ref)
    mace["electrostatic_potentials"] = mace.pop("esps")
    mace["density_coefficients"] = mace.pop("atomic_multipoles")
    for old, new in (("esps", "electrostatic_potentials"), ("atomic_multipoles", "density_coefficients")):
        mask = mace.pop(f"{old}_mask")
        mace[f"{new}_weight"] = mace.pop(f"{old}_weight") * mask  # MACE style: absent -> weight 0
        mace[new] = np.nan_to_num(mace[new])  # and a zero stored where absent
    mt, pt = to_torch(mace), to_torch(pred)
    pt["electrostatic_potentials"] = pt.pop("esps")
    for name, value in expected.items():
        assert LOSSES[name].fn(mt, pt).item() == pytest.approx(value, rel=1e-10)


def test_no_mask_no_weight_means_present():
    ref, pred = make_numpy_batch(10, p_absent=0.0)
    expected = numpy_loss("fermi_level", {**ref, "fermi_level_weight": np.ones(7)}, pred)
    del ref["fermi_level_mask"], ref["fermi_level_weight"]
    assert T.fermi_level(to_torch(ref), to_torch(pred)).item() == pytest.approx(expected, rel=1e-12)


def test_multipoles_need_enough_columns():
    ref, pred = make_numpy_batch(11, k_pred=16)  # L=3 predicted, data holds L=2
    with pytest.raises(LossInputError, match="at least as many multipole columns"):
        T.atomic_multipoles(to_torch(ref), to_torch(pred))
    # max_l limits the comparison to l <= 1
    got = T.atomic_multipoles(to_torch(ref), to_torch(pred), max_l=1).item()
    pred4 = {**pred, "density_coefficients": pred["density_coefficients"][:, :4]}
    assert got == pytest.approx(numpy_loss("atomic_multipoles", ref, pred4), rel=1e-12)


def test_missing_field_and_output_are_clear_errors():
    ref, pred = make_numpy_batch(12)
    del ref["esps"]
    with pytest.raises(LossInputError, match="no field 'esps'.*electrostatic_potentials"):
        T.esps(to_torch(ref), to_torch(pred))
    del pred["dipole"]
    with pytest.raises(LossInputError, match="model outputs have no 'dipole'"):
        T.dipole(to_torch(ref), to_torch(pred))


def test_negative_molecule_index_is_no_molecule():
    ref, pred = make_numpy_batch(13, p_absent=0.0)
    # config 0's molecular targets absent and its atoms carry -1: nothing leaks into other molecules
    ref["molecular_forces_mask"][0] = False
    ref["molecule"][ref["ptr"][0]:ref["ptr"][1]] = -1
    expected = numpy_loss("molecular_forces", ref, pred)
    assert T.molecular_forces(to_torch(ref), to_torch(pred)).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda():
    ref, pred = make_numpy_batch(14)
    r = {k: v.cuda() for k, v in to_torch(ref).items()}
    p = {k: v.cuda() for k, v in to_torch(pred).items()}
    for name in data_losses():
        assert LOSSES[name].fn(r, p).item() == pytest.approx(numpy_loss(name, ref, pred), rel=1e-10)


def test_batch_read_from_an_scfdata_file(tmp_path):
    """ScfdataFile.read_batch output goes straight into the losses (global molecule indices)."""
    h5io = pytest.importorskip("scfdata.h5io")
    from scfdata.columns import Columns

    ref, pred = make_numpy_batch(15, p_absent=0.3)
    n_at, n_mol = np.diff(ref["ptr"]), np.diff(ref["molecule_ptr"])
    B, N = len(n_at), int(n_at.sum())
    local_mol = ref["molecule"] - np.repeat(ref["molecule_ptr"][:-1], n_at)
    names = ["energy", "forces", "molecular_forces", "esps"]
    cols = Columns(
        n_atoms=n_at, n_molecules=n_mol,
        configs={"energy": np.nan_to_num(ref["energy"]), "weight": ref["weight"], "pbc": np.zeros((B, 3), bool),
                 "cell": np.zeros((B, 3, 3)), "config_type": np.array(["x"] * B),
                 "source": np.zeros((B, 2), np.int64)},
        atoms={"numbers": np.ones(N, np.int64), "positions": np.zeros((N, 3)), "molecule": local_mol,
               "forces": ref["forces"], "esps": ref["esps"]},
        molecules={"molecular_forces": ref["molecular_forces"], "molecule_centre": ref["molecule_centre"]},
        masks={n: ref[f"{n}_mask"] for n in names},
    )
    path = h5io.write_columns(tmp_path / "b.h5", cols)
    rows = [5, 0, 3]
    with h5io.ScfdataFile(path) as f:
        batch = f.read_batch(rows)
    sub_ref, sub_pred = select_configs(ref, pred, rows)
    for n in names:
        sub_ref[f"{n}_weight"] = np.ones_like(sub_ref[f"{n}_weight"])
    bt = to_torch(batch)
    for name in ("energy_per_atom", "forces", "molecular_forces", "esps"):
        got = LOSSES[name].fn(bt, to_torch(sub_pred)).item()
        assert got == pytest.approx(numpy_loss(name, sub_ref, sub_pred), rel=1e-12), name
