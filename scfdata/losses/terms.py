"""One pure torch function per loss: ``fn(ref, pred, **options) -> scalar tensor``.

Every loss is a masked mean over its entries (DESIGN.md, Losses)::

    L = Σ w · e² / Σ [w ≠ 0]      w = config weight × property weight, 0 where the target is absent

``e`` is the entry's error ``ref − pred``; a ``*_per_atom`` loss divides ``e`` by the config's atom
count N before squaring. Absent targets (mask False) are neither a zero target nor counted; entries
whose weight is zero are not counted either, so sparse targets are not diluted. With no entry the
loss is an exact 0 that stays connected to the graph (backward gives zero gradients, never NaN, even
when absent targets are stored as NaN).

Each loss is written once, as an ``_entries_<name>(ctx, **options) -> (target, pred, w)`` function
(``w`` broadcasts against them; a ``*_per_atom`` loss multiplies w by 1/N², which is the same as
dividing e by N); :func:`masked_mean` reduces it. ``WeightedLoss`` calls the same entry
functions and reduces all terms together. No Python loop over configs or molecules: per-config
sums are ``index_add`` over ``batch``, per-molecule sums over the global ``molecule`` index.

Not supported: Huber or other robust norms (squared error only), per-atom masks inside a config.
"""

from __future__ import annotations

import torch

from .batch import BatchContext, LossInputError

#: (target (R, k), prediction (R, k), weight w broadcasting against them: (R, 1) or (R, k))
Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def masked_mean(target: torch.Tensor, pred: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ w·e² / Σ[w≠0] with e = target − pred over the entries; 0 when no entry counts."""
    num, count = masked_sums(target, pred, w)
    return num / count.clamp(min=1).to(num.dtype)


def masked_sums(target: torch.Tensor, pred: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ w·e², Σ[w≠0]) — the numerator (with grad) and the entry count (no grad).

    With one weight per row (w of shape (R, 1)), the sum is a dot product of the row sums of e² with
    w and the count is k·#rows: no broadcasting over (R, k), which is the slow path on CPU.
    """
    present = w != 0
    e = _clean(target, present) - pred
    if w.shape[1] == 1 and e.shape[1] != 1:
        num = torch.dot((e * e).sum(dim=1), w[:, 0])
        count = torch.count_nonzero(present) * e.shape[1]
    else:
        num = (w * e * e).sum()
        count = torch.count_nonzero(present.expand(e.shape))
    return num, count


def _clean(target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The target with absent entries set to 0, so that a NaN stored there never reaches the loss or
    its gradient (done on the target, which has no grad, to keep the backward graph short)."""
    return torch.where(present, target, 0.0)


def _config_entries(ctx: BatchContext, field: str, pred: torch.Tensor, per_atom: bool, width: int) -> Entries:
    """A per-config target; ``per_atom`` divides e by N, i.e. multiplies w by 1/N² (same value)."""
    B = ctx.n_configs
    target = ctx.target(field)
    if target.numel() != B * width or pred.numel() != B * width:
        raise LossInputError(
            f"{field}: expected {B * width} values per batch ({B} configs x {width}), got target shape "
            f"{tuple(target.shape)} and prediction shape {tuple(pred.shape)}"
        )
    w = ctx.weight(field)
    if per_atom:
        w = w * ctx.inv_n_atoms_sq
    return target.reshape(B, width), pred.reshape(B, width), w


# ---- basic -----------------------------------------------------------------------------------------


def _entries_energy_per_atom(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "energy", ctx.output("energy"), per_atom=True, width=1)


def _entries_forces(ctx: BatchContext) -> Entries:
    return ctx.target("forces"), ctx.output("forces"), ctx.atom_weight("forces")


def _entries_stress(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "stress", ctx.output("stress"), per_atom=False, width=9)


# ---- electrostatic ---------------------------------------------------------------------------------


def _entries_atomic_multipoles(ctx: BatchContext, max_l: int | None = None) -> Entries:
    pred = ctx.output("density_coefficients")
    k = pred.shape[1]
    if max_l is not None:
        k = min(k, (int(max_l) + 1) ** 2)
    target = ctx.target("atomic_multipoles")
    if target.ndim != 2 or target.shape[1] < k:
        raise LossInputError(
            f"atomic_multipoles: the prediction has {k} columns ((L+1)^2) but the target has shape "
            f"{tuple(target.shape)}; the data must hold at least as many multipole columns (lower the "
            "model's L or the loss option max_l)"
        )
    return target[:, :k], pred[:, :k], ctx.atom_weight("atomic_multipoles")


def _entries_total_charge(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "total_charge", ctx.predicted_total_charge, per_atom=False, width=1)


def _entries_total_charge_per_atom(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "total_charge", ctx.predicted_total_charge, per_atom=True, width=1)


def _entries_dipole(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "dipole", ctx.output("dipole"), per_atom=False, width=3)


def _entries_dipole_per_atom(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "dipole", ctx.output("dipole"), per_atom=True, width=3)


def _entries_polarizability(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "polarizability", ctx.output("polarizability"), per_atom=False, width=9)


def _entries_fermi_level(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "fermi_level", ctx.output("fermi_level"), per_atom=False, width=1)


def _entries_fermi_level_per_atom(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "fermi_level", ctx.output("fermi_level"), per_atom=True, width=1)


def _entries_esps(ctx: BatchContext) -> Entries:
    return ctx.target("esps").reshape(-1, 1), ctx.output("esps").reshape(-1, 1), ctx.atom_weight("esps")


# ---- molecular (experimental) ----------------------------------------------------------------------


def _entries_molecular_forces(ctx: BatchContext) -> Entries:
    w = ctx.weight("molecular_forces")[:, :1].index_select(0, ctx.molecule_batch)
    return ctx.target("molecular_forces"), ctx.predicted_molecular_forces, w


def _predicted_cluster_virial(ctx: BatchContext) -> torch.Tensor:
    """(B, 1) Σ_M R_M · Σ_{i∈M} F̂_i (computed once per batch context)."""
    if "cluster_virial" not in ctx._cache:
        # centres of molecules whose config has no target may be NaN (absent): zero them, as _clean does
        counted = (ctx.weight("cluster_virial")[:, :1] != 0).index_select(0, ctx.molecule_batch)
        centre = torch.where(counted, ctx.target("molecule_centre"), 0.0)
        per_mol = (centre * ctx.predicted_molecular_forces).sum(dim=1)
        out = per_mol.new_zeros(ctx.n_configs)
        ctx._cache["cluster_virial"] = out.index_add(0, ctx.molecule_batch, per_mol).unsqueeze(1)
    return ctx._cache["cluster_virial"]


def _entries_cluster_virial(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "cluster_virial", _predicted_cluster_virial(ctx), per_atom=False, width=1)


def _entries_cluster_virial_per_atom(ctx: BatchContext) -> Entries:
    return _config_entries(ctx, "cluster_virial", _predicted_cluster_virial(ctx), per_atom=True, width=1)


ENTRIES = {
    "energy_per_atom": _entries_energy_per_atom,
    "forces": _entries_forces,
    "stress": _entries_stress,
    "atomic_multipoles": _entries_atomic_multipoles,
    "total_charge": _entries_total_charge,
    "total_charge_per_atom": _entries_total_charge_per_atom,
    "dipole": _entries_dipole,
    "dipole_per_atom": _entries_dipole_per_atom,
    "polarizability": _entries_polarizability,
    "fermi_level": _entries_fermi_level,
    "fermi_level_per_atom": _entries_fermi_level_per_atom,
    "esps": _entries_esps,
    "molecular_forces": _entries_molecular_forces,
    "cluster_virial": _entries_cluster_virial,
    "cluster_virial_per_atom": _entries_cluster_virial_per_atom,
}


# ---- public per-loss functions ---------------------------------------------------------------------


def _make(name: str):
    entries = ENTRIES[name]

    def fn(ref, pred, **options) -> torch.Tensor:
        ctx = ref if isinstance(ref, BatchContext) else BatchContext(ref, pred)
        return masked_mean(*entries(ctx, **options))

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = f"The `{name}` loss (masked mean, see the module docstring) of ``ref`` against ``pred``."
    return fn


energy_per_atom = _make("energy_per_atom")
forces = _make("forces")
stress = _make("stress")
atomic_multipoles = _make("atomic_multipoles")
total_charge = _make("total_charge")
total_charge_per_atom = _make("total_charge_per_atom")
dipole = _make("dipole")
dipole_per_atom = _make("dipole_per_atom")
polarizability = _make("polarizability")
fermi_level = _make("fermi_level")
fermi_level_per_atom = _make("fermi_level_per_atom")
esps = _make("esps")
molecular_forces = _make("molecular_forces")
cluster_virial = _make("cluster_virial")
cluster_virial_per_atom = _make("cluster_virial_per_atom")
