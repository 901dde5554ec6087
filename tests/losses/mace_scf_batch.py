"""MACE_SCF-style batches (as MACE collates them) and MACE_SCF's loss arithmetic, written in the test.

The batch carries what a MACE_SCF ``ExtAtomicData`` batch carries: per-config property weights under
MACE_SCF's names (``energy_weight``, ``density_coefficients_weight``, ``electrostatic_potentials_weight``,
``cluster_loss_weight``, ...), ``cluster_batch`` with molecule ids LOCAL to each config (MACE's
collation offsets only ``*index*``/``*face*`` fields), no stored molecular targets.

``MACE_SCF`` holds one function per loss name, written from MACE_SCF's source
(mace_scf/electrostatics/loss.py; energy/forces/stress from MACE v0.3.14 mace/modules/loss.py): plain
means over every entry, molecule ids from the unique (batch, cluster_batch) pairs. Nothing here is
imported from MACE_SCF or from scfdata.losses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

D = torch.float64


def mace_scf_batch(seed: int, n_configs: int = 6, k_vec: int = 7) -> tuple[dict, dict]:
    """(ref, pred) of torch tensors; every target present, random positive weights."""
    rng = np.random.default_rng(seed)
    n_at = rng.integers(2, 9, size=n_configs)
    N, B = int(n_at.sum()), n_configs
    local = []
    for n in n_at:  # 1..3 molecules per config, ids 0..k-1 each used, in shuffled order
        k = int(rng.integers(1, min(n, 3) + 1))
        local.append(rng.permutation(np.concatenate([np.arange(k), rng.integers(0, k, n - k)])))

    def t(shape, lo=None, hi=None):
        x = rng.normal(size=shape) if lo is None else rng.uniform(lo, hi, size=shape)
        return torch.tensor(x, dtype=D)

    ref = {
        "ptr": torch.tensor(np.concatenate([[0], np.cumsum(n_at)])),
        "batch": torch.tensor(np.repeat(np.arange(B), n_at)),
        "cluster_batch": torch.tensor(np.concatenate(local)),
        "positions": t((N, 3)) * 3,
        "weight": t(B, 0.5, 2.0),
        "energy": t(B) * 10, "energy_weight": t(B, 0.5, 2.0),
        "forces": t((N, 3)), "forces_weight": t(B, 0.5, 2.0),
        "stress": t((B, 3, 3)), "stress_weight": t(B, 0.5, 2.0),
        "density_coefficients": t((N, 4)), "density_coefficients_weight": t(B, 0.5, 2.0),
        "total_charge": t(B),
        "dipole": t((B, 3)), "dipole_weight": t((B, 3), 0.5, 2.0),
        "polarizability": t((B, 3, 3)), "polarizability_weight": t(B, 0.5, 2.0),
        "fermi_level": t(B), "fermi_level_weight": torch.ones(B, dtype=D),
        "electrostatic_potentials": torch.zeros(N, 1, dtype=D),  # MACE_SCF stores zeros when absent
        "electrostatic_potentials_weight": t(B, 0.5, 2.0),
        "cluster_loss_weight": t(B, 0.5, 2.0),
    }
    k2 = t((B, k_vec), 0.1, 4.0)
    k2[:, 0] = 0.0  # index 0 of the k grid is k = 0
    mask = torch.tensor(rng.random((B, k_vec)) < 0.7)
    mask[0, 1] = True
    pred = {
        "energy": t(B) * 10, "forces": t((N, 3)), "stress": t((B, 3, 3)), "density_coefficients": t((N, 4)),
        "dipole": t((B, 3)), "polarizability": t((B, 3, 3)), "fermi_level": t(B),
        "esps": t(N), "esps_dft": t(N),
        "feats_no_mu_model": t((N, 5)), "feats_no_mu_dft": t((N, 5)),
        "dq_dmu": t(N), "charges_history": t((N, 4)),
        "perturbing_vector": t((N, 4)), "perturbed_density": t((N, 4)),
        "rho_fftn": t((B, k_vec, 2)), "rho_fftn_dft": t((B, k_vec, 2)),
        "k_vectors_normed_squared": k2, "k_vectors_mask": mask,
    }
    return ref, pred


# ---- MACE_SCF's arithmetic ---------------------------------------------------------------------------


def _n(ref):
    return (ref["ptr"][1:] - ref["ptr"][:-1]).to(D)


def _per_atom(ref, x):
    return torch.repeat_interleave(x, ref["ptr"][1:] - ref["ptr"][:-1]).unsqueeze(-1)


def _scatter_sum(src, index, size=None):
    size = int(index.max()) + 1 if size is None else size
    return torch.zeros(size, *src.shape[1:], dtype=src.dtype).index_add(0, index, src)


def _molecules(ref):
    pairs = torch.stack([ref["batch"], ref["cluster_batch"]], dim=0).t()
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    return inverse, unique


def _delta_work(ref, pred):
    ids, unique = _molecules(ref)
    counts = _scatter_sum(torch.ones(len(ids), 1, dtype=D), ids)
    centres = _scatter_sum(ref["positions"], ids) / counts
    d_force = _scatter_sum(pred["forces"], ids) - _scatter_sum(ref["forces"], ids)
    per_mol = torch.sum(centres * d_force, dim=1, keepdim=True)
    return _scatter_sum(per_mol, unique[:, 0], len(ref["ptr"]) - 1).view(-1)


def _charge(ref, pred):
    return _scatter_sum(pred["density_coefficients"][:, 0], ref["batch"], len(ref["ptr"]) - 1)


def _molecular_forces(ref, pred):
    ids, unique = _molecules(ref)
    d = _scatter_sum(pred["forces"], ids) - _scatter_sum(ref["forces"], ids)
    err = _scatter_sum(d**2, unique[:, 0], len(ref["ptr"]) - 1)
    return torch.mean(ref["weight"].view(-1, 1) * ref["forces_weight"].view(-1, 1) * err / _n(ref).view(-1, 1))


def _stability(ref, pred, smooth=True, beta=10.0, offset=1.0):
    B = len(ref["ptr"]) - 1
    ratio = (_scatter_sum(pred["perturbed_density"] ** 2, ref["batch"], B)
             / _scatter_sum(pred["perturbing_vector"] ** 2, ref["batch"], B))
    act = F.softplus(ratio - offset, beta=beta, threshold=20.0) if smooth else torch.relu(ratio - offset)
    return torch.mean(act)


def _rho_fftn(ref, pred):
    wf = 1 / pred["k_vectors_normed_squared"] ** 0.5
    wf[:, 0] = 10.0
    wf = wf.clip(0.0, 10.0)
    return torch.mean((pred["rho_fftn"] - pred["rho_fftn_dft"]) ** 2 * wf.unsqueeze(-1))


def _fourier(ref, pred, form="poly", alpha=1.0, k_min=1.0):
    k2 = pred["k_vectors_normed_squared"]
    if form == "poly":
        wf = k2 ** (0.5 * alpha)
        w_max = k_min**alpha
        wf[:, 0] = w_max * 2.0
        wf = wf.clip(0, w_max)
    elif form == "exponential":
        wf = torch.exp(-alpha * k2**0.5)
    else:
        wf = torch.exp(-alpha * k2)
    wf = wf**2.0
    m = pred["k_vectors_mask"]
    return torch.mean((pred["rho_fftn"][m] - pred["rho_fftn_dft"][m]) ** 2 * wf[m].unsqueeze(-1))


def _w(ref, *shape):
    return ref["weight"].view(-1, *shape)


MACE_SCF = {
    "energy_per_atom": lambda r, p: torch.mean(r["weight"] * r["energy_weight"]
                                               * torch.square((r["energy"] - p["energy"]) / _n(r))),
    "forces": lambda r, p: torch.mean(_per_atom(r, r["weight"]) * _per_atom(r, r["forces_weight"])
                                      * torch.square(r["forces"] - p["forces"])),
    "stress": lambda r, p: torch.mean(_w(r, 1, 1) * r["stress_weight"].view(-1, 1, 1)
                                      * torch.square(r["stress"] - p["stress"])),
    "atomic_multipoles": lambda r, p: torch.mean(
        _per_atom(r, r["weight"]) * _per_atom(r, r["density_coefficients_weight"])
        * torch.square(r["density_coefficients"] - p["density_coefficients"])),
    "total_charge": lambda r, p: torch.mean(r["weight"] * torch.square(r["total_charge"] - _charge(r, p))),
    "total_charge_per_atom": lambda r, p: torch.mean(
        r["weight"] * torch.square((r["total_charge"] - _charge(r, p)) / _n(r))),
    "dipole": lambda r, p: torch.mean(_w(r, 1) * r["dipole_weight"].view(-1, 3)
                                      * torch.square(r["dipole"] - p["dipole"])),
    "dipole_per_atom": lambda r, p: torch.mean(_w(r, 1) * r["dipole_weight"].view(-1, 3)
                                               * torch.square((r["dipole"] - p["dipole"]) / _n(r).view(-1, 1))),
    "polarizability": lambda r, p: torch.mean(
        _w(r, 1, 1) * r["polarizability_weight"].view(-1, 1, 1)
        * torch.square((r["polarizability"].view(-1, 3, 3) - p["polarizability"]) / _n(r).view(-1, 1, 1))),
    "fermi_level": lambda r, p: torch.mean(r["weight"] * torch.square(r["fermi_level"] - p["fermi_level"])),
    "fermi_level_per_atom": lambda r, p: torch.mean(
        r["weight"] * torch.square((r["fermi_level"] - p["fermi_level"]) / _n(r))),
    "esps": lambda r, p: torch.mean(_per_atom(r, r["weight"]) * _per_atom(r, r["electrostatic_potentials_weight"])
                                    * torch.square(p["esps_dft"].view(-1, 1) - p["esps"].view(-1, 1))),
    "cluster_virial": lambda r, p: torch.mean(r["weight"] * r["cluster_loss_weight"] * _delta_work(r, p) ** 2),
    "cluster_virial_per_atom": lambda r, p: torch.mean(
        r["weight"] * r["cluster_loss_weight"] * _delta_work(r, p) ** 2 / _n(r)),
    "molecular_forces": _molecular_forces,
    "field_features": lambda r, p: torch.mean(
        _per_atom(r, r["weight"]) * _per_atom(r, r["electrostatic_potentials_weight"])
        * torch.mean(torch.square(p["feats_no_mu_model"] - p["feats_no_mu_dft"]), dim=-1).view(-1, 1)),
    "fixedpoint_scf_stability": _stability,
    "fermi_level_gradient": lambda r, p: torch.mean(torch.relu(p["dq_dmu"])),
    "final_terms_fixedpoint_scf_stability": lambda r, p: torch.mean(
        torch.abs(p["charges_history"][..., -1] - p["charges_history"][..., -2])),
    "rho_fftn": _rho_fftn,
    "fourier_density": _fourier,
}


def mace_scf_loss(name: str, ref: dict, pred: dict, **options) -> float:
    """MACE_SCF's value of loss ``name``, with ``pred["loss_weight_modifier"]`` applied to the config
    weights as MACE_SCF's WeightedLoss does."""
    if "loss_weight_modifier" in pred:
        ref = {**ref, "weight": ref["weight"] * pred["loss_weight_modifier"]}
    with torch.no_grad():
        return float(MACE_SCF[name](ref, {k: v.clone() for k, v in pred.items()}, **options))
