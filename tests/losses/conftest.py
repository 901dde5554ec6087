"""Random ``ref``/``pred`` batches for the loss tests, built in numpy with explicit per-config loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CONFIG_FIELDS = {  # name -> per-config shape
    "energy": (),
    "stress": (3, 3),
    "total_charge": (),
    "dipole": (3,),
    "polarizability": (3, 3),
    "fermi_level": (),
    "cluster_virial": (),
}
ATOM_FIELDS = {"forces": (3,), "atomic_multipoles": (9,), "esps": ()}
MOL_FIELDS = {"molecular_forces": (3,)}
TARGETS = [*CONFIG_FIELDS, *ATOM_FIELDS, *MOL_FIELDS]


def data_losses() -> list[str]:
    """The losses that compare with reference data (not MACE_SCF's model-internal terms)."""
    from scfdata.losses import LOSSES

    return [n for n, s in LOSSES.items() if s.kind == "data"]


def make_numpy_batch(seed: int, n_configs: int = 7, k_pred: int = 4, p_absent: float = 0.3):
    """(ref, pred) as dicts of numpy arrays; absent targets are NaN (never a zero target)."""
    rng = np.random.default_rng(seed)
    n_at = rng.integers(1, 9, size=n_configs)
    n_mol = np.array([rng.integers(1, min(n, 4) + 1) for n in n_at])
    ptr = np.concatenate([[0], np.cumsum(n_at)])
    mptr = np.concatenate([[0], np.cumsum(n_mol)])
    N, M = int(ptr[-1]), int(mptr[-1])
    molecule = []
    for b in range(n_configs):  # every molecule gets >= 1 atom, then the rest at random
        local = np.concatenate([np.arange(n_mol[b]), rng.integers(0, n_mol[b], n_at[b] - n_mol[b])])
        molecule.append(rng.permutation(local) + mptr[b])
    ref = {
        "ptr": ptr,
        "batch": np.repeat(np.arange(n_configs), n_at),
        "weight": np.where(rng.random(n_configs) < 0.15, 0.0, rng.uniform(0.5, 2.0, n_configs)),
        "molecule": np.concatenate(molecule),
        "molecule_ptr": mptr,
        "molecule_batch": np.repeat(np.arange(n_configs), n_mol),
        "molecule_centre": rng.normal(size=(M, 3)) * 3,
    }
    sizes = {}
    for name, shape in CONFIG_FIELDS.items():
        sizes[name] = (n_configs, shape)
    for name, shape in ATOM_FIELDS.items():
        sizes[name] = (N, shape)
    for name, shape in MOL_FIELDS.items():
        sizes[name] = (M, shape)
    for name, (n, shape) in sizes.items():
        mshape = (n_configs, 3) if name == "dipole" else (n_configs,)
        mask = rng.random(mshape) >= p_absent
        pw = np.where(rng.random(mshape) < 0.1, 0.0, rng.uniform(0.2, 3.0, mshape))
        value = rng.normal(size=(n, *shape))
        present = mask
        if name == "dipole":
            value[~present] = np.nan
        elif n == n_configs:
            value[~present] = np.nan
        else:
            owner = ref["batch"] if n == N else ref["molecule_batch"]
            value[~present[owner]] = np.nan
        ref[name] = value
        ref[f"{name}_mask"] = mask
        ref[f"{name}_weight"] = pw
    pred = {
        "energy": rng.normal(size=n_configs),
        "forces": rng.normal(size=(N, 3)),
        "stress": rng.normal(size=(n_configs, 3, 3)),
        "density_coefficients": rng.normal(size=(N, k_pred)),
        "dipole": rng.normal(size=(n_configs, 3)),
        "polarizability": rng.normal(size=(n_configs, 3, 3)),
        "fermi_level": rng.normal(size=n_configs),
        "esps": rng.normal(size=N),
    }
    return ref, pred


def to_torch(d: dict, dtype=torch.float64, requires_grad: bool = False) -> dict:
    out = {}
    for k, v in d.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            out[k] = torch.tensor(v, dtype=dtype, requires_grad=requires_grad)
        elif v.dtype.kind == "b":
            out[k] = torch.tensor(v)
        elif v.dtype.kind not in "iu":
            continue  # strings (config_type) are not tensors
        else:
            out[k] = torch.tensor(v, dtype=torch.int64)
    return out


def select_configs(ref: dict, pred: dict, rows) -> tuple[dict, dict]:
    """The configs ``rows`` (in that order) of a numpy batch, with molecule indices re-made global."""
    rows = list(rows)
    ptr, mptr = ref["ptr"], ref["molecule_ptr"]
    a_idx = np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in rows]).astype(int)
    m_idx = np.concatenate([np.arange(mptr[r], mptr[r + 1]) for r in rows]).astype(int)
    n_at = np.array([ptr[r + 1] - ptr[r] for r in rows])
    n_mol = np.array([mptr[r + 1] - mptr[r] for r in rows])
    new_ptr = np.concatenate([[0], np.cumsum(n_at)])
    new_mptr = np.concatenate([[0], np.cumsum(n_mol)])
    out = {"ptr": new_ptr, "batch": np.repeat(np.arange(len(rows)), n_at),
           "molecule_ptr": new_mptr, "molecule_batch": np.repeat(np.arange(len(rows)), n_mol)}
    molecule = []
    for j, r in enumerate(rows):
        molecule.append(ref["molecule"][ptr[r]:ptr[r + 1]] - mptr[r] + new_mptr[j])
    out["molecule"] = np.concatenate(molecule)
    n_c, N, M = len(ptr) - 1, int(ptr[-1]), int(mptr[-1])
    for k, v in ref.items():
        if k in out:
            continue
        if k in ATOM_FIELDS:
            out[k] = v[a_idx]
        elif k in MOL_FIELDS or k == "molecule_centre":
            out[k] = v[m_idx]
        else:
            out[k] = v[rows]
    new_pred = {}
    for k, v in pred.items():
        n = len(v)
        assert n in (n_c, N, M) and (n_c != N)
        new_pred[k] = v[a_idx] if n == N else v[rows]
    return out, new_pred


@pytest.fixture
def batch_factory():
    return make_numpy_batch
