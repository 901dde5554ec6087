"""Molecular forces, molecule centres, cluster virials and their masks.

``F_M = Σ_{i∈M} F_i`` (eV/Å), ``R_M`` the geometric (MACE_SCF default) or mass-weighted centre of the
molecule's unwrapped atoms (Å), and the cluster virial ``W = Σ_M R_M · F_M`` (eV) per config.
Molecule indices here are GLOBAL (0 .. n_molecules_total-1 over all configs): add molecule_ptr offsets
to the within-config ``/atoms/molecule``.

Periodic configs: ``Σ_M R_M · F_M`` changes when a molecule is replaced by one of its periodic images
(R_M → R_M + L shifts W by L · F_M), so it is masked there (:func:`molecular_masks`). An image-independent
alternative is :func:`molecular_virial_from_stress`:
``W_mol = W_atomic − Σ_i (r_i − R_M(i)) · F_i`` with ``W_atomic = −V tr(σ)`` from the DFT stress (ase
convention σ = (1/V) ∂E/∂ε, so the virial tensor is −Vσ, which equals Σ_i r_i ⊗ F_i for an isolated
cluster). For an open cluster W_mol equals W exactly; the existing ``cluster_virial`` loss predicts
Σ_M R_M · F̂_M, which is image dependent, so the derive step does not store W_mol for periodic configs.

Inputs: numpy arrays, or torch tensors for :func:`molecular_forces`, :func:`molecule_centres` and
:func:`cluster_virial` (the result is then a tensor on the same device, differentiable).
Not supported: per-molecule virial tensors (only the scalar trace), centres of extended networks.
"""

from __future__ import annotations

import numpy as np

CENTRES = ("geometric", "mass")
REASON_SINGLE = "single molecule (no intermolecular force)"
REASON_EXTENDED = "extended network (no molecules)"
REASON_PERIODIC = "periodic (W depends on the image of each molecule)"


def _is_torch(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "index_add")


def _segment_sum(values, index, n: int):
    """Sum rows of ``values`` into ``n`` bins given by ``index`` (numpy or torch)."""
    if _is_torch(values):
        import torch

        idx = torch.as_tensor(index, device=values.device, dtype=torch.long)
        out = torch.zeros((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add(0, idx, values)
    v = np.asarray(values, dtype=float)
    idx = np.asarray(index, dtype=np.int64)
    if v.ndim == 1:
        return np.bincount(idx, weights=v, minlength=n)
    flat = v.reshape(len(v), -1)
    out = np.stack([np.bincount(idx, weights=flat[:, k], minlength=n) for k in range(flat.shape[1])], axis=1)
    return out.reshape((n,) + v.shape[1:])


def _check_index(index, n_rows: int, n_bins: int, what: str, bins: str) -> np.ndarray:
    idx = np.asarray(index.detach().cpu() if _is_torch(index) else index)
    if idx.shape != (n_rows,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array of shape ({n_rows},), got shape {idx.shape} "
                         f"dtype {idx.dtype}")
    if n_rows and (idx.min() < 0 or idx.max() >= n_bins):
        raise ValueError(f"{what} must lie in 0..{n_bins - 1} ({bins}), found {idx.min()}..{idx.max()}")
    return idx.astype(np.int64)


def _rows(x, ncol: int, what: str) -> tuple:
    shape = tuple(x.shape)
    if len(shape) != 2 or shape[1] != ncol:
        raise ValueError(f"{what} must have shape (n, {ncol}), got {shape}")
    return shape


def molecular_forces(forces, molecule_global, n_molecules_total: int):
    """(M, 3) net force on each molecule, F_M = Σ_{i∈M} F_i (eV/Å); molecule_global (n_atoms,) in 0..M-1."""
    _rows(forces, 3, "forces")
    idx = _check_index(molecule_global, forces.shape[0], n_molecules_total, "molecule_global", "molecules")
    return _segment_sum(forces if _is_torch(forces) else np.asarray(forces, float), idx, int(n_molecules_total))


def molecule_centres(unwrapped_positions, molecule_global, n_molecules_total: int, masses=None,
                     centre: str = "geometric"):
    """(M, 3) centre of each molecule from its unwrapped (whole) positions, Å.

    centre="geometric": mean of the atom positions (MACE_SCF's convention); "mass": mass-weighted (needs
    ``masses`` (n_atoms,) amu). Every molecule must own at least one atom.
    """
    if centre not in CENTRES:
        raise ValueError(f"Unknown centre {centre!r}. Must be one of 'geometric' or 'mass'.")
    pos = unwrapped_positions
    _rows(pos, 3, "unwrapped_positions")
    n = pos.shape[0]
    M = int(n_molecules_total)
    idx = _check_index(molecule_global, n, M, "molecule_global", "molecules")
    if centre == "mass":
        if masses is None:
            raise ValueError("centre='mass' needs masses (n_atoms,) in amu, got None")
        w = masses if _is_torch(masses) else np.asarray(masses, dtype=float)
        if tuple(w.shape) != (n,) or (w <= 0).any():
            raise ValueError(f"masses must be positive with shape ({n},), got shape {tuple(w.shape)}")
    else:
        w = np.ones(n)
    if _is_torch(pos):
        import torch

        w = torch.as_tensor(w, dtype=pos.dtype, device=pos.device)
    else:
        pos = np.asarray(pos, dtype=float)
    total = _segment_sum(w, idx, M)
    if (np.asarray(total.detach().cpu() if _is_torch(total) else total) <= 0).any():
        empty = np.nonzero(np.bincount(idx, minlength=M) == 0)[0]
        raise ValueError(f"every molecule needs at least one atom; molecules {empty[:10].tolist()} have none "
                         f"(of {M})")
    return _segment_sum(pos * w[:, None], idx, M) / total[:, None]


def cluster_virial(centres, molecular_forces, molecule_config, n_configs: int):
    """(n_configs,) scalar cluster virial W = Σ_M R_M · F_M (eV); molecule_config (M,) in 0..n_configs-1.

    Depends on the origin only through (Σ_M F_M) · origin: origin independent for a config whose net force
    vanishes. Meaningful for open boundaries only (see the module docstring and :func:`molecular_masks`).
    """
    _rows(centres, 3, "centres")
    _rows(molecular_forces, 3, "molecular_forces")
    if tuple(centres.shape) != tuple(molecular_forces.shape):
        raise ValueError(f"centres and molecular_forces must have the same shape (M, 3), got "
                         f"{tuple(centres.shape)} and {tuple(molecular_forces.shape)}")
    idx = _check_index(molecule_config, centres.shape[0], n_configs, "molecule_config", "configs")
    if _is_torch(centres) or _is_torch(molecular_forces):
        import torch

        ref = centres if _is_torch(centres) else molecular_forces
        r = torch.as_tensor(centres, dtype=ref.dtype, device=ref.device)
        f = torch.as_tensor(molecular_forces, dtype=ref.dtype, device=ref.device)
        return _segment_sum((r * f).sum(dim=1), idx, int(n_configs))
    dot = np.einsum("mk,mk->m", np.asarray(centres, float), np.asarray(molecular_forces, float))
    return _segment_sum(dot, idx, int(n_configs))


def atomic_virial_from_stress(stress, cells):
    """(n_configs,) W_atomic = tr(virial) = −V tr(σ) (eV), σ in ase's convention (eV/Å³, (n, 3, 3) or Voigt 6)."""
    s = np.asarray(stress, dtype=float)
    c = np.asarray(cells, dtype=float)
    if s.ndim == 2 and s.shape[1] == 6:
        trace = s[:, :3].sum(axis=1)
    elif s.ndim == 3 and s.shape[1:] == (3, 3):
        trace = np.trace(s, axis1=1, axis2=2)
    else:
        raise ValueError(f"stress must have shape (n_configs, 3, 3) or (n_configs, 6), got {s.shape}")
    if c.shape != (len(s), 3, 3):
        raise ValueError(f"cells must have shape ({len(s)}, 3, 3), got {c.shape}")
    volume = np.abs(np.linalg.det(c))
    if (volume <= 0).any():
        raise ValueError(f"the atomic virial from the stress needs a cell with volume > 0; configs "
                         f"{np.nonzero(volume <= 0)[0][:10].tolist()} have none")
    return -volume * trace


def molecular_virial_from_stress(stress, cells, unwrapped_positions, forces, molecule_global, centres, atom_ptr):
    """(n_configs,) image-independent molecular virial W_mol = W_atomic − Σ_i (r_i − R_M(i)) · F_i (eV).

    ``W_atomic = −V tr(σ)`` (:func:`atomic_virial_from_stress`); r_i − R_M(i) uses the unwrapped positions
    and the centres of the same molecules, so no image choice enters. Equals Σ_M R_M · F_M for a cluster in a
    box large enough that it does not interact with its images.
    """
    pos = np.asarray(unwrapped_positions, dtype=float)
    f = np.asarray(forces, dtype=float)
    _rows(pos, 3, "unwrapped_positions")
    _rows(f, 3, "forces")
    r = np.asarray(centres, dtype=float)
    idx = _check_index(molecule_global, len(pos), len(r), "molecule_global", "molecules")
    ptr = np.asarray(atom_ptr, dtype=np.int64)
    atom_config = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    intra = np.einsum("ak,ak->a", pos - r[idx], f)
    return atomic_virial_from_stress(stress, cells) - np.bincount(atom_config, weights=intra, minlength=len(ptr) - 1)


def molecular_masks(n_molecules, extended, pbc, *, target: str = "cluster_virial"):
    """Which configs carry a molecular target: (mask (n_configs,) bool, reasons list of str, "" when kept).

    target="molecular_forces": needs >= 2 molecules and no extended network. target="cluster_virial":
    additionally an open boundary (pbc all False), since Σ_M R_M · F_M is image dependent otherwise.
    """
    if target not in ("molecular_forces", "cluster_virial"):
        raise ValueError(f"Unknown target {target!r}. Must be one of 'molecular_forces' or 'cluster_virial'.")
    n_mol = np.asarray(n_molecules, dtype=np.int64)
    ext = np.asarray(extended, dtype=bool)
    pb = np.asarray(pbc, dtype=bool)
    if ext.shape != n_mol.shape or pb.shape != n_mol.shape + (3,):
        raise ValueError(f"expected n_molecules (n,), extended (n,), pbc (n, 3); got {n_mol.shape}, {ext.shape}, "
                         f"{pb.shape}")
    periodic = pb.any(axis=1) if target == "cluster_virial" else np.zeros(len(n_mol), bool)
    reasons = np.where(ext, REASON_EXTENDED, np.where(n_mol < 2, REASON_SINGLE,
                                                      np.where(periodic, REASON_PERIODIC, "")))
    return reasons == "", [str(x) for x in reasons]
