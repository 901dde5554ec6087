"""One pure torch function per loss: ``fn(ref, pred, convention="scfdata", **options) -> scalar tensor``.

Two arithmetic conventions, chosen per term (``WeightedLoss(..., convention=...)`` or the option
``convention`` of one term):

``scfdata`` (default): every loss is a masked mean over its entries (DESIGN.md, Losses)::

    L = Σ w · e² / Σ [w ≠ 0]      w = config weight × property weight, 0 where the target is absent

``e`` is the entry's error ``ref − pred``; a ``*_per_atom`` loss divides ``e`` by the config's atom count
N before squaring. Absent targets are neither a zero target nor counted; entries whose weight is zero
are not counted either, so sparse targets are not diluted.

``mace_scf``: MACE_SCF's own arithmetic (mace_scf/electrostatics/loss.py, and MACE v0.3.14's
energy/forces/stress): a plain mean over every entry of the batch, with its divisions by N, its
property weights (none for total charge and Fermi level; ``forces_weight`` for the molecular forces;
``cluster_loss_weight`` for the cluster virials), polarizability (e/N)², molecular forces
Σ_{M∈config} |ΔF_M|²/N per config averaged over configs × 3, cluster_virial_per_atom ΔW²/N. Absent
targets still contribute nothing to the sum (MACE_SCF would train them towards the zero it stores);
they do count in the mean, as in MACE_SCF. On a batch where every target is present the two
conventions differ only in those divisions and weights.

With no entry a loss is an exact 0 that stays connected to the graph (backward gives zero gradients,
never NaN, even when absent targets are stored as NaN).

Each data loss is written once, as ``_entries_<name>(ctx, convention, **options) -> Entries``
(``w`` broadcasts against target and prediction; multiplying w by 1/N² is the same as dividing e by N);
:func:`masked_mean` reduces it. ``WeightedLoss`` calls the same functions and reduces all terms
together. Model-internal terms (SCF stability, Fermi-level gradient, Fourier-space density) read only
model outputs: ``SCALARS[name](ctx, **options) -> scalar``, MACE_SCF's arithmetic in both conventions.
No Python loop over configs or molecules.

Not supported: Huber or other robust norms (squared error only), per-atom masks inside a config.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import molecules as mol
from .batch import BatchContext, LossInputError, require_shape
from .internal import SCALARS
from .options import CONVENTIONS, check_convention, check_options

MACE_SCF = "mace_scf"


class Entries(NamedTuple):
    target: torch.Tensor  # (R, k)
    pred: torch.Tensor  # (R, k)
    w: torch.Tensor  # (R, 1) or (R, k)
    denominator: int | None = None  # None: Σ[w≠0] (scfdata); a count of entries: plain mean (mace_scf)


def masked_mean(e: Entries) -> torch.Tensor:
    """Σ w·e² / Σ[w≠0] (or / ``e.denominator``) over the entries; 0 when no entry counts."""
    num, count = masked_sums(e.target, e.pred, e.w)
    if e.denominator is not None:
        return num / max(e.denominator, 1)
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


_WIDTH_SHAPES = {1: lambda B: ((B,), (B, 1)), 3: lambda B: ((B, 3),), 9: lambda B: ((B, 3, 3), (B, 9))}


_OWN = "<the field's own>"  # default property weight of _config_entries: <field>_weight


def _config_entries(ctx: BatchContext, field: str, pred: torch.Tensor, width: int, convention: str, *,
                    inv_n: torch.Tensor | None = None, prop: str | None = _OWN, masks: tuple[str, ...] = (),
                    target: torch.Tensor | None = None) -> Entries:
    """A per-config target of ``width`` columns. ``inv_n`` multiplies w (1/N² = e divided by N);
    ``prop`` names the property weight (default: ``field``'s own; None: none); ``masks`` the presence
    fields (default: ``field``)."""
    B = ctx.n_configs
    shapes = _WIDTH_SHAPES[width](B)
    meaning = f"B={B} configs" + ("" if width == 1 else f" × {width}")
    if target is None:
        target = ctx.target(field, shapes, meaning)
    require_shape(pred, shapes, f"the {field} prediction", meaning)
    w = ctx.entry_weight(masks or (field,), field if prop == _OWN else prop)
    if inv_n is not None:
        w = w * inv_n
    return Entries(target.reshape(B, width), pred.reshape(B, width), w,
                   B * width if convention == MACE_SCF else None)


def _atom_entries(ctx: BatchContext, target: torch.Tensor, pred: torch.Tensor, w_config: torch.Tensor,
                  convention: str) -> Entries:
    return Entries(target, pred, ctx.to_atoms(w_config), target.numel() if convention == MACE_SCF else None)


def _pred_config(ctx: BatchContext, name: str, width: int) -> torch.Tensor:
    B = ctx.n_configs
    return ctx.output(name, _WIDTH_SHAPES[width](B), f"B={B} configs" + ("" if width == 1 else f" × {width}"))


# ---- basic -----------------------------------------------------------------------------------------


def _entries_energy_per_atom(ctx: BatchContext, convention: str) -> Entries:
    return _config_entries(ctx, "energy", _pred_config(ctx, "energy", 1), 1, convention, inv_n=ctx.inv_n_atoms_sq)


def _entries_forces(ctx: BatchContext, convention: str) -> Entries:
    N, words = ctx.atoms
    target = ctx.target("forces", ((N, 3),), f"{words} × 3")
    pred = ctx.output("forces", ((N, 3),), f"{words} × 3")
    return _atom_entries(ctx, target, pred, ctx.weight("forces"), convention)


def _entries_stress(ctx: BatchContext, convention: str) -> Entries:
    return _config_entries(ctx, "stress", _pred_config(ctx, "stress", 9), 9, convention)


# ---- electrostatic ---------------------------------------------------------------------------------


def _entries_atomic_multipoles(ctx: BatchContext, convention: str, max_l: int | None = None) -> Entries:
    N, words = ctx.atoms
    pred = ctx.output("density_coefficients", ((N, None),), f"{words} × (L+1)^2")
    k = pred.shape[1]
    if max_l is not None:
        k = min(k, (int(max_l) + 1) ** 2)
    target = ctx.target("atomic_multipoles", ((N, None),), f"{words} × (L+1)^2")
    if target.shape[1] < k:
        raise LossInputError(
            f"atomic_multipoles: the prediction has {k} columns ((L+1)^2) but the target has shape "
            f"{tuple(target.shape)}; the data must hold at least as many multipole columns (lower the "
            "model's L or the loss option max_l)"
        )
    return _atom_entries(ctx, target[:, :k], pred[:, :k], ctx.weight("atomic_multipoles"), convention)


def _charge_or_fermi(ctx: BatchContext, field: str, pred: torch.Tensor, convention: str, per_atom: bool) -> Entries:
    # MACE_SCF weighs total charge and Fermi level by the config weight alone (no property weight)
    prop = None if convention == MACE_SCF else _OWN
    return _config_entries(ctx, field, pred, 1, convention, prop=prop,
                           inv_n=ctx.inv_n_atoms_sq if per_atom else None)


def _entries_total_charge(ctx: BatchContext, convention: str) -> Entries:
    return _charge_or_fermi(ctx, "total_charge", ctx.predicted_total_charge, convention, False)


def _entries_total_charge_per_atom(ctx: BatchContext, convention: str) -> Entries:
    return _charge_or_fermi(ctx, "total_charge", ctx.predicted_total_charge, convention, True)


def _entries_dipole(ctx: BatchContext, convention: str) -> Entries:
    return _config_entries(ctx, "dipole", _pred_config(ctx, "dipole", 3), 3, convention)


def _entries_dipole_per_atom(ctx: BatchContext, convention: str) -> Entries:
    return _config_entries(ctx, "dipole", _pred_config(ctx, "dipole", 3), 3, convention, inv_n=ctx.inv_n_atoms_sq)


def _entries_polarizability(ctx: BatchContext, convention: str) -> Entries:
    inv_n = ctx.inv_n_atoms_sq if convention == MACE_SCF else None  # MACE_SCF: ((α − α̂)/N)²
    return _config_entries(ctx, "polarizability", _pred_config(ctx, "polarizability", 9), 9, convention,
                           inv_n=inv_n)


def _entries_fermi_level(ctx: BatchContext, convention: str) -> Entries:
    return _charge_or_fermi(ctx, "fermi_level", _pred_config(ctx, "fermi_level", 1), convention, False)


def _entries_fermi_level_per_atom(ctx: BatchContext, convention: str) -> Entries:
    return _charge_or_fermi(ctx, "fermi_level", _pred_config(ctx, "fermi_level", 1), convention, True)


def _entries_esps(ctx: BatchContext, convention: str) -> Entries:
    """Target: scfdata, the batch's ``esps`` (scfdata's precomputed /atoms/esps); mace_scf, the model's
    ``esps_dft`` output (the ESP of the DFT multipoles, computed by a MACE_SCF model), as MACE_SCF does.
    A MACE_SCF batch's ``electrostatic_potentials`` (zeros unless the data had ESPs; MACE_SCF's loss never
    reads it) is the target only when the model gives no ``esps_dft``."""
    N, words = ctx.atoms
    shapes = ((N,), (N, 1))
    scfdata_esps = ctx.ref.stored_as("esps") == "esps"
    if "esps_dft" in ctx.pred and (convention == MACE_SCF or not scfdata_esps):
        target = ctx.output("esps_dft", shapes, words)
    else:
        target = ctx.target("esps", shapes, words)
    pred = ctx.output("esps", shapes, words)
    return _atom_entries(ctx, target.reshape(N, 1), pred.reshape(N, 1), ctx.weight("esps"), convention)


def _entries_field_features(ctx: BatchContext, convention: str) -> Entries:
    """Field features of the model's density against those of the DFT density (MACE_SCF's
    feats_no_mu_model / feats_no_mu_dft), weighted per atom by the ESP weight as MACE_SCF does."""
    N, words = ctx.atoms
    model = ctx.output("feats_no_mu_model", ((N, None),), f"{words} × features")
    dft = ctx.output("feats_no_mu_dft", (tuple(model.shape),), "the shape of feats_no_mu_model")
    return _atom_entries(ctx, dft, model, ctx.weight("esps"), convention)


# ---- molecular (experimental) ----------------------------------------------------------------------


def _entries_molecular_forces(ctx: BatchContext, convention: str) -> Entries:
    target, masks = mol.reference_molecular_forces(ctx)
    m = mol.molecules(ctx)
    if convention == MACE_SCF:  # Σ_{M∈b} |ΔF_M|² · w_b·forces_weight_b / N_b, mean over B × 3
        w = ctx.entry_weight(masks, "forces") * ctx.inv_n_atoms
        denominator = 3 * ctx.n_configs
    else:
        w = ctx.entry_weight(masks, "molecular_forces")
        denominator = None
    return Entries(target, mol.predicted_molecular_forces(ctx), w[:, :1].index_select(0, m.batch), denominator)


def _cluster_virial(ctx: BatchContext, convention: str, inv_n: torch.Tensor | None) -> Entries:
    target, masks = mol.reference_cluster_virial(ctx)
    w = ctx.entry_weight(masks, "cluster_virial")  # cluster_virial_weight, or MACE_SCF's cluster_loss_weight
    pred = mol.predicted_cluster_virial(ctx, w != 0)
    return _config_entries(ctx, "cluster_virial", pred, 1, convention, inv_n=inv_n, masks=masks, target=target)


def _entries_cluster_virial(ctx: BatchContext, convention: str) -> Entries:
    return _cluster_virial(ctx, convention, None)


def _entries_cluster_virial_per_atom(ctx: BatchContext, convention: str) -> Entries:
    # scfdata: (ΔW/N)²; MACE_SCF divides the squared error by N once
    return _cluster_virial(ctx, convention, ctx.inv_n_atoms if convention == MACE_SCF else ctx.inv_n_atoms_sq)


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
    "field_features": _entries_field_features,
}


# ---- public per-loss functions ---------------------------------------------------------------------


def _make(name: str):
    def fn(ref, pred, convention: str = "scfdata", **options) -> torch.Tensor:
        from .registry import LOSSES

        check_convention(convention)
        msg = check_options(name, options, LOSSES[name].options)
        if msg:
            raise ValueError(msg)
        ctx = ref if isinstance(ref, BatchContext) else BatchContext(ref, pred)
        if name in SCALARS:
            return SCALARS[name](ctx, **options)
        return masked_mean(ENTRIES[name](ctx, convention, **options))

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = (f"The `{name}` loss of ``ref`` against ``pred`` (see the module docstring); "
                  f"``convention`` is one of {', '.join(CONVENTIONS)}.")
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
field_features = _make("field_features")
fixedpoint_scf_stability = _make("fixedpoint_scf_stability")
fermi_level_gradient = _make("fermi_level_gradient")
final_terms_fixedpoint_scf_stability = _make("final_terms_fixedpoint_scf_stability")
rho_fftn = _make("rho_fftn")
fourier_density = _make("fourier_density")
