"""Parity with MACE_SCF (issue 18): its batches read right, its arithmetic exactly, every name it accepts.

The expected values are MACE_SCF's formulas written in ``mace_scf_batch.py`` from its source, never
imported from it; batches are built the way MACE collates them (local ``cluster_batch``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mace_scf_batch import mace_scf_batch, mace_scf_loss

from scfdata.losses import LOSSES, WeightedLoss
from scfdata.losses.batch import LossInputError

ALL = list(LOSSES)
MOLECULAR = ["molecular_forces", "cluster_virial", "cluster_virial_per_atom"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_loss_is_mace_scf_arithmetic(name, seed):
    ref, pred = mace_scf_batch(seed)
    got = LOSSES[name].fn(ref, pred, convention="mace_scf").item()
    want = mace_scf_loss(name, ref, pred)
    assert want > 0
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("options", [{"form": "poly", "alpha": 2.0, "k_min": 1.3},
                                     {"form": "exponential", "alpha": 0.7}, {"form": "gaussian", "alpha": 0.4}])
def test_fourier_density_forms(options):
    ref, pred = mace_scf_batch(3)
    got = LOSSES["fourier_density"].fn(ref, pred, **options).item()
    assert got == pytest.approx(mace_scf_loss("fourier_density", ref, pred, **options), rel=1e-12)


@pytest.mark.parametrize("options", [{"smooth": False}, {"smooth": True, "beta": 3.0, "offset": 0.5}])
def test_scf_stability_options(options):
    ref, pred = mace_scf_batch(4)
    got = LOSSES["fixedpoint_scf_stability"].fn(ref, pred, **options).item()
    assert got == pytest.approx(mace_scf_loss("fixedpoint_scf_stability", ref, pred, **options), rel=1e-12)


def test_weighted_loss_convention_mace_scf_every_name():
    """The batched reduction of WeightedLoss gives the same 21 numbers, and their weighted sum."""
    ref, pred = mace_scf_batch(5)
    weights = {name: 0.5 + i for i, name in enumerate(ALL)}
    loss_fn = WeightedLoss(weights, convention="mace_scf")
    p = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in pred.items()}
    total = loss_fn(ref, p)
    for name, w in weights.items():
        assert loss_fn.last_breakdown[name] == pytest.approx(w * mace_scf_loss(name, ref, pred), rel=1e-12), name
    assert total.item() == pytest.approx(sum(loss_fn.last_breakdown.values()), rel=1e-12)
    total.backward()
    assert p["forces"].grad.abs().sum() > 0 and torch.isfinite(p["forces"].grad).all()


def test_per_term_convention_overrides_the_default():
    ref, pred = mace_scf_batch(6)
    loss_fn = WeightedLoss({"polarizability": {"weight": 1.0, "convention": "mace_scf"}, "molecular_forces": 1.0})
    loss_fn(ref, pred)
    assert loss_fn.last_breakdown["polarizability"] == pytest.approx(
        mace_scf_loss("polarizability", ref, pred), rel=1e-12)
    scf = LOSSES["molecular_forces"].fn(ref, pred).item()  # the scfdata convention
    assert loss_fn.last_breakdown["molecular_forces"] == pytest.approx(scf, rel=1e-12)
    assert scf != pytest.approx(mace_scf_loss("molecular_forces", ref, pred), rel=1e-3)


def _scfdata_style(ref: dict, stored: bool) -> dict:
    """The same batch with scfdata's global ``molecule`` ids (+ molecule_ptr), and, if ``stored``,
    molecular targets stored as scfdata stores them (here from the same forces and positions)."""
    out = {k: v for k, v in ref.items() if k != "cluster_batch"}
    B = len(ref["ptr"]) - 1
    n_mol = torch.stack([ref["cluster_batch"][ref["batch"] == b].max() + 1 for b in range(B)])
    mptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(n_mol, 0)])
    molecule = ref["cluster_batch"] + mptr[ref["batch"]]
    out.update(molecule=molecule, molecule_ptr=mptr)
    if stored:
        M = int(mptr[-1])
        f = torch.zeros(M, 3, dtype=torch.float64).index_add(0, molecule, ref["forces"])
        cnt = torch.zeros(M, 1, dtype=torch.float64).index_add(0, molecule, torch.ones(len(molecule), 1,
                                                                                        dtype=torch.float64))
        centre = torch.zeros(M, 3, dtype=torch.float64).index_add(0, molecule, ref["positions"]) / cnt
        mb = torch.repeat_interleave(torch.arange(B), n_mol)
        W = torch.zeros(B, dtype=torch.float64).index_add(0, mb, (centre * f).sum(1))
        out.update(molecular_forces=f, molecule_centre=centre, cluster_virial=W)
    return out


@pytest.mark.parametrize("convention", ["scfdata", "mace_scf"])
@pytest.mark.parametrize("stored", [False, True])
def test_local_and_global_ids_give_identical_molecular_losses(convention, stored):
    ref, pred = mace_scf_batch(7, n_configs=8)
    glob = _scfdata_style(ref, stored)
    for name in MOLECULAR:
        a = LOSSES[name].fn(ref, pred, convention=convention).item()
        b = LOSSES[name].fn(glob, pred, convention=convention).item()
        assert a > 0 and b == pytest.approx(a, rel=1e-12), name


def test_relabelled_local_ids_change_nothing():
    ref, pred = mace_scf_batch(8)
    relabelled = dict(ref)
    relabelled["cluster_batch"] = 5 * ref["cluster_batch"] + 2 + ref["batch"]  # other local ids, same molecules
    for name in MOLECULAR:
        for convention in ("scfdata", "mace_scf"):
            assert LOSSES[name].fn(relabelled, pred, convention=convention).item() == pytest.approx(
                LOSSES[name].fn(ref, pred, convention=convention).item(), rel=1e-12)


def test_local_ids_are_not_merged_across_configs():
    """The old reading took cluster_batch as global: molecule 0 of every config became one molecule."""
    ref, pred = mace_scf_batch(9, n_configs=8)
    merged = {k: v for k, v in ref.items() if k != "cluster_batch"}
    merged["molecule"] = ref["cluster_batch"]  # local ids passed off as global: refused, never merged
    with pytest.raises(LossInputError, match=r"ref\['molecule'\] is not global within the batch: atom \d+"):
        LOSSES["molecular_forces"].fn(merged, pred)


def test_cluster_batch_without_batch_is_a_clear_error():
    ref, pred = mace_scf_batch(10)
    del ref["batch"]
    with pytest.raises(LossInputError, match="cluster_batch holds molecule ids local to each config: "
                                             "making them global needs batch"):
        LOSSES["molecular_forces"].fn(ref, pred, convention="mace_scf")


def test_no_molecule_ids_is_a_clear_error():
    ref, pred = mace_scf_batch(11)
    del ref["cluster_batch"]
    with pytest.raises(LossInputError, match="need molecule ids: 'molecule' .* or 'cluster_batch'"):
        LOSSES["cluster_virial"].fn(ref, pred)


@pytest.mark.parametrize("convention", ["scfdata", "mace_scf"])
def test_modifier_scales_config_weights_exactly(convention):
    ref, pred = mace_scf_batch(12)
    B = len(ref["ptr"]) - 1
    c = 0.25  # a power of two: the scaling is exact in floating point
    scaled = {**pred, "loss_weight_modifier": torch.full((B,), c, dtype=torch.float64)}
    for name in ALL:
        plain = LOSSES[name].fn(ref, pred, convention=convention).item()
        got = LOSSES[name].fn(ref, scaled, convention=convention).item()
        reads_weight = LOSSES[name].kind == "data" or name == "field_features"
        assert got == (c * plain if reads_weight else plain), name


def test_modifier_per_config_is_mace_scf_and_equals_scaled_weights():
    ref, pred = mace_scf_batch(13)
    B = len(ref["ptr"]) - 1
    mod = torch.tensor(np.random.default_rng(0).uniform(0.0, 1.0, B))
    mod[1] = 0.0  # an SCF run that did not converge
    p = {**pred, "loss_weight_modifier": mod}
    loss_fn = WeightedLoss(dict.fromkeys(ALL, 1.0), convention="mace_scf")
    loss_fn(ref, p)
    for name in ALL:
        assert loss_fn.last_breakdown[name] == pytest.approx(mace_scf_loss(name, ref, p), rel=1e-12), name
    reweighted = {**ref, "weight": ref["weight"] * mod}  # scfdata convention: the same as scaled weights
    scf = WeightedLoss(dict.fromkeys(ALL, 1.0))
    a, b = dict(scf.terms(ref, p)), dict(scf.terms(reweighted, pred))
    for name in ALL:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-12), name


def test_absent_targets_contribute_nothing_but_count_in_mace_scf_means():
    """The one documented difference from MACE_SCF: a Fermi level absent from a config (weight 0 there)
    is trained towards MACE_SCF's stored 0 by MACE_SCF; here it contributes nothing, and still counts
    in the plain mean. Where the property weight itself is 0 (forces), both agree exactly."""
    ref, pred = mace_scf_batch(14)
    ref["fermi_level_weight"][[0, 3]] = 0.0
    ref["fermi_level"][[0, 3]] = 0.0
    ref["forces_weight"][2] = 0.0
    present = ref["fermi_level_weight"] != 0
    B = len(present)
    want = float((ref["weight"] * (ref["fermi_level"] - pred["fermi_level"]) ** 2)[present].sum() / B)
    got = LOSSES["fermi_level"].fn(ref, pred, convention="mace_scf").item()
    assert got == pytest.approx(want, rel=1e-12)
    assert got < mace_scf_loss("fermi_level", ref, pred)  # MACE_SCF also fits the two zeros
    assert LOSSES["forces"].fn(ref, pred, convention="mace_scf").item() == pytest.approx(
        mace_scf_loss("forces", ref, pred), rel=1e-12)


def test_esps_target_per_convention():
    """mace_scf: the model's esps_dft, as MACE_SCF; scfdata: the batch's precomputed `esps`. A MACE_SCF
    batch's `electrostatic_potentials` (zeros unless the data had ESPs, never read by MACE_SCF's loss)
    is not taken over the model's esps_dft in either convention."""
    ref, pred = mace_scf_batch(15)
    want = mace_scf_loss("esps", ref, pred)
    for convention in ("scfdata", "mace_scf"):
        assert LOSSES["esps"].fn(ref, pred, convention=convention).item() == pytest.approx(want, rel=1e-12)
    scf = {k: v for k, v in ref.items() if k != "electrostatic_potentials"}
    scf["esps"] = torch.randn(len(ref["batch"]), dtype=torch.float64)
    N = len(ref["batch"])
    w = torch.repeat_interleave(ref["weight"] * ref["electrostatic_potentials_weight"], torch.diff(ref["ptr"]))
    e = scf["esps"] - pred["esps"]
    assert LOSSES["esps"].fn(scf, pred).item() == pytest.approx(float((w * e * e).sum() / N), rel=1e-12)
    assert LOSSES["esps"].fn(scf, pred, convention="mace_scf").item() == pytest.approx(want, rel=1e-12)
    no_dft = {k: v for k, v in pred.items() if k != "esps_dft"}  # no model target: the batch's ESPs
    e = ref["electrostatic_potentials"].view(-1) - pred["esps"]
    assert LOSSES["esps"].fn(ref, no_dft).item() == pytest.approx(float((w * e * e).sum() / N), rel=1e-12)


def test_every_name_of_mace_scf_is_known():
    names = {"energy_per_atom", "forces", "stress", "atomic_multipoles", "total_charge", "dipole",
             "total_charge_per_atom", "dipole_per_atom", "polarizability", "fermi_level_per_atom", "fermi_level",
             "esps", "cluster_virial_per_atom", "cluster_virial", "molecular_forces", "fixedpoint_scf_stability",
             "fermi_level_gradient", "final_terms_fixedpoint_scf_stability", "field_features", "rho_fftn",
             "fourier_density"}  # the keys of MACE_SCF's _LOSS_FUNCTIONS
    assert set(LOSSES) == names
    WeightedLoss(dict.fromkeys(names, 1.0))


@pytest.mark.parametrize("convention", ["scfdata", "mace_scf"])
def test_absent_forces_stored_as_nan_never_reach_the_computed_molecular_targets(convention):
    ref, pred = mace_scf_batch(16)
    lo, hi = int(ref["ptr"][1]), int(ref["ptr"][2])
    ref["forces_weight"][1] = 0.0  # config 1 has no forces: MACE style, weight 0
    clean = {k: v.clone() for k, v in ref.items()}
    clean["forces"][lo:hi] = 0.0
    ref["forces"][lo:hi] = float("nan")
    for name in MOLECULAR:
        p = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in pred.items()}
        loss = LOSSES[name].fn(ref, p, convention=convention)
        loss.backward()
        assert loss.item() == pytest.approx(LOSSES[name].fn(clean, pred, convention=convention).item(), rel=1e-12)
        assert torch.isfinite(p["forces"].grad).all(), name


@pytest.mark.parametrize("name", ["molecular_forces", "cluster_virial_per_atom", "fixedpoint_scf_stability",
                                  "fourier_density", "field_features"])
def test_gradcheck_mace_scf(name):
    ref, pred = mace_scf_batch(17, n_configs=3, k_vec=4)
    spec = LOSSES[name]
    keys = [k for k in spec.outputs if pred[k].is_floating_point() and k != "k_vectors_normed_squared"]

    def f(*xs):
        return spec.fn(ref, {**pred, **dict(zip(keys, xs, strict=True))}, convention="mace_scf")

    inputs = tuple(pred[k].clone().requires_grad_(True) for k in keys)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_configs_without_molecules_keep_their_placeholder_ids_out():
    """A config whose molecule field is absent (mask False, 0 molecules, placeholder ids 0) adds nothing
    to the next config's molecule 0."""
    ref, pred = mace_scf_batch(18)
    glob = _scfdata_style(ref, stored=False)
    B = len(ref["ptr"]) - 1
    lo, hi = int(ref["ptr"][2]), int(ref["ptr"][3])
    n_mol = torch.diff(glob["molecule_ptr"])
    n_mol[2] = 0  # config 2: no molecules, ids stored as 0 (global: the start of config 3's range)
    glob["molecule_ptr"] = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(n_mol, 0)])
    local = ref["cluster_batch"].clone()
    local[lo:hi] = 0
    glob["molecule"] = local + glob["molecule_ptr"][ref["batch"]]
    glob["molecule_mask"] = torch.ones(B, dtype=torch.bool)
    glob["molecule_mask"][2] = False
    cut = {k: v for k, v in ref.items()}
    cut["cluster_batch"] = ref["cluster_batch"].clone()
    cut["cluster_batch"][lo:hi] = -1  # the same: no molecule for config 2's atoms
    for name in MOLECULAR:
        assert LOSSES[name].fn(glob, pred).item() == pytest.approx(LOSSES[name].fn(cut, pred).item(), rel=1e-12)
    del glob["molecule_mask"]
    with pytest.raises(LossInputError, match="is not global within the batch"):
        LOSSES["molecular_forces"].fn(glob, pred)


def test_fourier_density_ignores_what_the_mask_leaves_out():
    ref, pred = mace_scf_batch(19)
    mask = pred["k_vectors_mask"]
    bad = {k: v.clone() for k, v in pred.items()}
    bad["rho_fftn"][~mask] = float("nan")
    bad["k_vectors_normed_squared"][1:][~mask[1:]] = float("inf")
    rho = bad["rho_fftn"].clone().requires_grad_(True)
    loss = LOSSES["fourier_density"].fn(ref, {**bad, "rho_fftn": rho}, form="exponential")
    loss.backward()
    assert loss.item() == pytest.approx(mace_scf_loss("fourier_density", ref, pred, form="exponential"), rel=1e-12)
    assert torch.isfinite(rho.grad).all() and (rho.grad[~mask] == 0).all()
