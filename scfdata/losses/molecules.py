"""The molecules of a batch, for the molecular losses: global ids, net forces, centres, cluster virials.

Ids come from one of two places:

- ``molecule`` (scfdata): ids global within the batch, with ``molecule_ptr`` or ``molecule_batch``
  (``scfdata.data`` makes them so). Ids that are not global (an atom whose id belongs to another
  config's range) are an error, never a silent merge of molecules.
- ``cluster_batch`` (MACE_SCF): ids local to each config (MACE's collation offsets only fields named
  ``*index*``/``*face*``, so a MACE_SCF batch carries the per-config molID). They are made global from
  the pairs (config, local id), numbered in sorted order as MACE_SCF numbers them. This needs ``batch``.

Reference molecular targets: scfdata's stored ``molecular_forces``, ``molecule_centre`` (unwrapped) and
``cluster_virial`` are used where the batch has them (with ``molecule`` ids). Otherwise (a MACE_SCF
batch) they are computed from the reference atoms as MACE_SCF does at every step: F_M = Σ_{i∈M} F_i from
the reference forces, R_M = the mean of the atoms' ``positions`` (as stored: not unwrapped, not
mass-weighted), W = Σ_M R_M·F_M; such computed targets are present where the forces are.

Atoms with a negative id, and the atoms of configs whose ``molecule_mask`` is False, belong to no
molecule: they are left out of every molecular sum (MACE_SCF would group negative ids as one more
molecule of their config).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import BatchContext, LossInputError


@dataclass(frozen=True)
class Molecules:
    index: torch.Tensor  # (N,) global molecule id of each atom, -1 = no molecule
    batch: torch.Tensor  # (M,) config of each molecule
    n: int  # M
    stored: bool  # scfdata ids: stored molecular targets (if any) line up with them


def molecules(ctx: BatchContext) -> Molecules:
    """The batch's molecules (computed once per BatchContext)."""
    if "molecules" not in ctx._cache:
        if ctx.has("molecule"):
            ctx._cache["molecules"] = _from_global(ctx)
        elif ctx.has("cluster_batch"):
            ctx._cache["molecules"] = _from_local(ctx)
        else:
            raise LossInputError(
                "the molecular losses need molecule ids: 'molecule' (scfdata, global within the batch) or "
                f"'cluster_batch' (MACE_SCF, per config); found keys: {ctx.ref.available()}"
            )
    return ctx._cache["molecules"]


def _atom_ids(ctx: BatchContext, name: str) -> torch.Tensor:
    N = ctx.n_atoms_total
    ids = ctx.index(name)
    if ids.shape != (N,):
        raise LossInputError(f"ref[{name!r}]: expected shape ({N},) (one molecule id per atom), "
                             f"got {tuple(ids.shape)}")
    return ids


def _from_local(ctx: BatchContext) -> Molecules:
    local = _atom_ids(ctx, "cluster_batch")
    valid = local >= 0
    span = int(local.max()) + 1 if local.numel() else 1
    key = ctx.batch * span + local  # (config, local id) -> one sortable integer
    uniq, inverse = torch.unique(key[valid], sorted=True, return_inverse=True)
    index = torch.full_like(local, -1)
    index[valid] = inverse
    return Molecules(index, uniq // span, int(uniq.shape[0]), stored=False)


def _from_global(ctx: BatchContext) -> Molecules:
    index = _atom_ids(ctx, "molecule")
    assigned = ctx.presence("molecule")  # configs whose molecules are absent: their atoms in none
    if assigned is not None:
        index = torch.where(assigned[:, 0].index_select(0, ctx.batch), index, -1)
    valid = index >= 0
    if ctx.has("molecule_batch"):
        mol_batch = ctx.index("molecule_batch")
    elif ctx.has("molecule_ptr"):
        mptr = ctx.index("molecule_ptr")
        if mptr.shape != (ctx.n_configs + 1,):
            raise LossInputError(f"ref['molecule_ptr']: expected shape ({ctx.n_configs + 1},), got "
                                 f"{tuple(mptr.shape)}")
        mol_batch = torch.repeat_interleave(torch.arange(ctx.n_configs, device=ctx.device), mptr[1:] - mptr[:-1])
    else:  # ids only: each molecule's config from its atoms (checked below like the others)
        n = int(index.max()) + 1 if bool(valid.any()) else 0
        mol_batch = torch.zeros(n, dtype=torch.long, device=ctx.device).scatter_(0, index[valid], ctx.batch[valid])
    n = int(mol_batch.shape[0])
    if n:  # one gather over the atoms, no boolean indexing (this runs every step)
        wrong = valid & ((index >= n) | (mol_batch[index.clamp(0, n - 1)] != ctx.batch))
    else:
        wrong = valid
    if bool(wrong.any()):
        atom = int(torch.nonzero(wrong).flatten()[0])
        raise LossInputError(
            f"ref['molecule'] is not global within the batch: atom {atom} (config {int(ctx.batch[atom])}) has "
            f"molecule id {int(index[atom])}, outside its config's molecules (molecule_ptr/molecule_batch, "
            f"{n} molecules in all). Per-config ids (MACE_SCF's molID) belong in 'cluster_batch', which the "
            "losses make global."
        )
    return Molecules(index, mol_batch, n, stored=True)


def sum_by_molecule(ctx: BatchContext, values: torch.Tensor) -> torch.Tensor:
    """(M, ...) Σ_{i∈M} of per-atom ``values`` (atoms of no molecule dropped)."""
    mol = molecules(ctx)
    idx = torch.where(mol.index >= 0, mol.index, mol.n)
    return values.new_zeros(mol.n + 1, *values.shape[1:]).index_add(0, idx, values)[: mol.n]


def predicted_molecular_forces(ctx: BatchContext) -> torch.Tensor:
    """(M, 3) Σ_{i∈M} F̂_i."""
    if "pred_mol_forces" not in ctx._cache:
        N, words = ctx.atoms
        forces = ctx.output("forces", ((N, 3),), f"{words} × 3")
        ctx._cache["pred_mol_forces"] = sum_by_molecule(ctx, forces)
    return ctx._cache["pred_mol_forces"]


def _present_on_atoms(ctx: BatchContext, field: str, values: torch.Tensor) -> torch.Tensor:
    """``values`` with the atoms of configs where ``field`` is absent set to 0 (absent may be NaN)."""
    present = ctx.presence(field)
    if present is None:
        return values
    return torch.where(present[:, :1].index_select(0, ctx.batch), values, 0.0)


def reference_molecular_forces(ctx: BatchContext) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(M, 3) reference F_M and the fields whose masks say where it is present."""
    mol = molecules(ctx)
    if mol.stored and ctx.has("molecular_forces"):
        f = ctx.target("molecular_forces", ((mol.n, 3),), f"M={mol.n} molecules × 3")
        return f, ("molecular_forces",)
    N, words = ctx.atoms
    forces = _present_on_atoms(ctx, "forces", ctx.target("forces", ((N, 3),), f"{words} × 3"))
    return sum_by_molecule(ctx, forces), ("forces", "molecular_forces")


def molecule_centres(ctx: BatchContext) -> torch.Tensor:
    """(M, 3) R_M: stored (unwrapped) centres, else the mean of the atoms' reference positions."""
    mol = molecules(ctx)
    if mol.stored and ctx.has("molecule_centre"):
        return ctx.target("molecule_centre", ((mol.n, 3),), f"M={mol.n} molecules × 3")
    if mol.stored and ctx.has("cluster_virial"):
        raise LossInputError("the ref batch stores cluster_virial but not the molecule_centre it was computed "
                             f"with; found keys: {ctx.ref.available()}")
    N, words = ctx.atoms
    positions = ctx.target("positions", ((N, 3),), f"{words} × 3")
    ones = positions.new_ones(N, 1)
    return sum_by_molecule(ctx, positions) / sum_by_molecule(ctx, ones).clamp(min=1)


def reference_cluster_virial(ctx: BatchContext) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(B, 1) reference W and the fields whose masks say where it is present."""
    mol = molecules(ctx)
    B = ctx.n_configs
    if mol.stored and ctx.has("cluster_virial"):
        w = ctx.target("cluster_virial", ((B,), (B, 1)), f"B={B} configs")
        return w.reshape(B, 1), ("cluster_virial",)
    forces, masks = reference_molecular_forces(ctx)
    present = torch.ones(B, 1, dtype=torch.bool, device=ctx.device)
    for field in masks:
        p = ctx.presence(field)
        present = present if p is None else present & p[:, :1]
    per_mol = (molecule_centres(ctx) * forces).sum(dim=1, keepdim=True)
    per_mol = torch.where(present.index_select(0, mol.batch), per_mol, 0.0)
    W = per_mol.new_zeros(B, 1).index_add(0, mol.batch, per_mol)
    return W, (*masks, "cluster_virial")


def predicted_cluster_virial(ctx: BatchContext, counted: torch.Tensor) -> torch.Tensor:
    """(B, 1) Σ_M R_M·Σ_{i∈M} F̂_i; centres of configs not ``counted`` ((B, 1) bool) are zeroed, so a
    NaN stored there (absent) never reaches the loss or its gradient."""
    mol = molecules(ctx)
    centre = torch.where(counted.index_select(0, mol.batch), molecule_centres(ctx), 0.0)
    per_mol = (centre * predicted_molecular_forces(ctx)).sum(dim=1, keepdim=True)
    return per_mol.new_zeros(ctx.n_configs, 1).index_add(0, mol.batch, per_mol)
