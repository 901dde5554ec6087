"""Model-internal loss terms of MACE_SCF: they read model outputs only, no reference data.

SCF stability (``fixedpoint_scf_stability``, ``final_terms_fixedpoint_scf_stability``), the Fermi-level
gradient (``fermi_level_gradient``) and the Fourier-space density (``rho_fftn``, ``fourier_density``):
MACE_SCF's arithmetic (mace_scf/electrostatics/loss.py), written anew, the same in both conventions.
Each is ``SCALARS[name](ctx, **options) -> scalar tensor``; the prediction keys each reads are in its
docstring and in the registry. ``loss_weight_modifier`` does not touch them (they read no config weight,
as in MACE_SCF). Where MACE_SCF would return NaN (``fourier_density`` with no k-vector in the mask) the
term is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import BatchContext, LossInputError, require_shape, require_tensor


def _fixedpoint_scf_stability(ctx: BatchContext, smooth: bool = True, beta: float = 10.0,
                              offset: float = 1.0) -> torch.Tensor:
    """mean over configs of act(|δρ_out|² / |δρ_in|² − offset): the SCF map's response to a random
    perturbation (pred perturbing_vector, perturbed_density: per atom) should not grow it.
    act = softplus(β, threshold 20) when ``smooth``, else relu."""
    N, words = ctx.atoms
    v = ctx.output("perturbing_vector")
    require = (N, *([None] * (v.ndim - 1)))
    require_shape(v, (require,), "pred['perturbing_vector']", f"{words} first")
    d = ctx.output("perturbed_density", (tuple(v.shape),), "the shape of perturbing_vector")
    ratio = ctx.sum_over_configs(d * d) / ctx.sum_over_configs(v * v) - offset
    act = F.softplus(ratio, beta=beta, threshold=20.0) if smooth else torch.relu(ratio)
    return act.mean()


def _fermi_level_gradient(ctx: BatchContext) -> torch.Tensor:
    """mean relu(dq/dμ): penalises a charge that grows with the Fermi level (pred dq_dmu)."""
    return torch.relu(ctx.output("dq_dmu")).mean()


def _final_terms_fixedpoint_scf_stability(ctx: BatchContext) -> torch.Tensor:
    """mean |q_last − q_second_last| over the SCF charge history (pred charges_history, last axis = step)."""
    h = ctx.output("charges_history")
    if h.ndim < 1 or h.shape[-1] < 2:
        raise LossInputError(f"pred['charges_history']: expected at least 2 SCF steps on the last axis, "
                             f"got shape {tuple(h.shape)}")
    return (h[..., -1] - h[..., -2]).abs().mean()


def _fourier_inputs(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B = ctx.n_configs
    rho = ctx.output("rho_fftn", ((B, None, 2),), f"B={B} configs × k-vectors × (re, im)")
    dft = ctx.output("rho_fftn_dft", (tuple(rho.shape),), "the shape of rho_fftn")
    k2 = ctx.output("k_vectors_normed_squared", (tuple(rho.shape[:2]),), "configs × k-vectors")
    return rho, dft, k2


def _first_k(k2: torch.Tensor) -> torch.Tensor:
    """(1, K) True at index 0 of the k grid (k = 0)."""
    return (torch.arange(k2.shape[1], device=k2.device) == 0).unsqueeze(0)


def _rho_fftn(ctx: BatchContext) -> torch.Tensor:
    """mean over configs × k × (re, im) of min(1/|k|, 10) · (ρ̂(k) − ρ_DFT(k))², weight 10 at k = 0."""
    rho, dft, k2 = _fourier_inputs(ctx)
    weight = torch.where(_first_k(k2), 10.0, k2.rsqrt()).clamp(0.0, 10.0)
    return ((rho - dft) ** 2 * weight.unsqueeze(-1)).mean()


def _fourier_density(ctx: BatchContext, form: str = "poly", alpha: float = 1.0, k_min: float = 1.0) -> torch.Tensor:
    """mean over the k-vectors of pred k_vectors_mask of w(k)² (ρ̂(k) − ρ_DFT(k))²; w(k) =
    min(|k|^α, k_min^α) with k = 0 at the cap (poly), exp(−α|k|) (exponential), exp(−α|k|²) (gaussian)."""
    rho, dft, k2 = _fourier_inputs(ctx)
    mask = ctx.pred["k_vectors_mask"] if "k_vectors_mask" in ctx.pred else None
    if mask is None:
        raise LossInputError(f"the model outputs have no 'k_vectors_mask'; found: {ctx.pred.available()}")
    mask = require_shape(require_tensor(mask, "pred['k_vectors_mask']"), (tuple(k2.shape),),
                         "pred['k_vectors_mask']", "configs × k-vectors").bool()
    if form == "poly":
        w_max = k_min**alpha
        weight = torch.where(_first_k(k2), 2.0 * w_max, k2 ** (0.5 * alpha)).clamp(0.0, w_max)
    elif form == "exponential":
        weight = torch.exp(-alpha * k2.sqrt())
    else:  # gaussian
        weight = torch.exp(-alpha * k2)
    # k-vectors outside the mask are zeroed before squaring: their weights or densities may be inf/NaN
    diff = torch.where(mask.unsqueeze(-1), rho - dft, 0.0)
    w2 = torch.where(mask, weight, 0.0) ** 2
    return (diff**2 * w2.unsqueeze(-1)).sum() / max(2 * int(mask.sum()), 1)


SCALARS = {
    "fixedpoint_scf_stability": _fixedpoint_scf_stability,
    "fermi_level_gradient": _fermi_level_gradient,
    "final_terms_fixedpoint_scf_stability": _final_terms_fixedpoint_scf_stability,
    "rho_fftn": _rho_fftn,
    "fourier_density": _fourier_density,
}
