"""``WeightedLoss``: the loss of one training stage, Σ_t λ_t · L_t over the stage's loss dict.

A stage loss dict maps loss names (``LOSSES``) to a weight λ (int or float, ≥ 0, finite) or to
``{weight: λ, <option>: value, ...}`` with the options the loss declares, plus ``convention``
(``scfdata`` or ``mace_scf``, overriding the ``convention`` given to ``WeightedLoss`` for that term).
A term with λ = 0 is not computed. Every call logs one DEBUG line on the ``scfdata.losses`` logger::

    loss breakdown: energy_per_atom: 1.23e-05, forces: 4.5e-06,

(each weighted term λ_t·L_t as a plain number, the format ``scfdata plot-losses`` reads back).

Not supported: per-term schedules inside a stage (use separate stages), loss names outside ``LOSSES``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from .batch import BatchContext
from .options import check_convention, did_you_mean
from .registry import parse_loss_dict
from .terms import ENTRIES, SCALARS, masked_mean, masked_sums

logger = logging.getLogger("scfdata.losses")

__all__ = ["WeightedLoss", "parse_loss_dict", "did_you_mean"]


class WeightedLoss:
    """The weighted sum of a stage's losses; ``loss_fn(ref, pred) -> scalar tensor``.

    ``convention`` (``"scfdata"``, default, or ``"mace_scf"``) selects the arithmetic of every term
    (``scfdata.losses.terms``); a term's own ``convention`` option overrides it.

    >>> loss_fn = WeightedLoss({"energy_per_atom": 1.0, "forces": 10, "esps": {"weight": 0.1}})
    >>> loss = loss_fn(batch, model_outputs); loss.backward(); loss_fn.last_breakdown
    {'energy_per_atom': 0.0012, 'forces': 0.031, 'esps': 0.0004}
    """

    def __init__(self, stage_loss_dict: Mapping, convention: str = "scfdata"):
        check_convention(convention)
        parsed, problems = parse_loss_dict(stage_loss_dict)
        if problems:
            raise ValueError("invalid stage loss dict: " + "; ".join(problems))
        self.convention = convention
        self.weights: dict[str, float] = {n: w for n, (w, _) in parsed.items()}
        self.conventions: dict[str, str] = {n: o.get("convention", convention) for n, (_, o) in parsed.items()}
        self.options: dict[str, dict] = {n: {k: v for k, v in o.items() if k != "convention"}
                                         for n, (_, o) in parsed.items()}
        self.active = [n for n, w in self.weights.items() if w != 0.0]
        self.last_breakdown: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"WeightedLoss({self.weights}, convention={self.convention!r})"

    def _term(self, ctx: BatchContext, name: str):
        """A model-internal term's scalar value, or a data term's Entries."""
        if name in SCALARS:
            return SCALARS[name](ctx, **self.options[name])
        return ENTRIES[name](ctx, self.conventions[name], **self.options[name])

    def terms(self, ref, pred) -> dict[str, torch.Tensor]:
        """Each active term, unweighted, as a tensor (for evaluation tables)."""
        ctx = BatchContext(ref, pred)
        out = {}
        for name in self.active:
            value = self._term(ctx, name)
            out[name] = value if name in SCALARS else masked_mean(value)
        return out

    def __call__(self, ref, pred) -> torch.Tensor:
        ctx = BatchContext(ref, pred)
        if not self.active:
            self.last_breakdown = {}
            logger.debug("loss breakdown: ")
            return self._zero(ctx)
        weighted = self._weighted_terms(ctx)
        values = weighted.detach().tolist()
        self.last_breakdown = dict(zip(self.active, values, strict=True))
        logger.debug("loss breakdown: " + "".join(f"{n}: {v:.6g}, " for n, v in self.last_breakdown.items()))
        return weighted.sum()

    def _weighted_terms(self, ctx: BatchContext) -> torch.Tensor:
        """(T,) λ_t·L_t for the active terms, reduced together.

        The per-config entries of all terms are put side by side in one (B, K) matrix, so their squared
        sums and counts are one reduction instead of several per term; atom and molecule terms are
        reduced one by one (``masked_sums``); one index_add then sums each term's columns. A term with a
        fixed denominator (mace_scf's plain means, model-internal scalars) has its count replaced by it.
        Same formula as ``masked_mean``.
        """
        B = ctx.n_configs
        config_items: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        nums, counts, col_term = [], [], []
        fixed: dict[int, float] = {}
        for t, name in enumerate(self.active):
            term = self._term(ctx, name)
            if name in SCALARS:
                nums.append(term.reshape(1).to(ctx.dtype))
                counts.append(torch.ones(1, device=ctx.device))
                col_term.append(t)
                fixed[t] = 1.0
                continue
            if term.denominator is not None:
                fixed[t] = float(max(term.denominator, 1))
            if term.target.shape[0] == B:
                config_items.append((t, term.target, term.pred, term.w.expand_as(term.target)))
            else:  # atoms or molecules: large, one weight per row; reduced on its own
                num, count = masked_sums(term.target, term.pred, term.w)
                nums.append(num.reshape(1))
                counts.append(count.reshape(1))
                col_term.append(t)
        if config_items:  # every per-config term side by side in one (B, K) matrix
            target = torch.cat([it[1] for it in config_items], dim=1)
            pred = torch.cat([it[2] for it in config_items], dim=1)
            w = torch.cat([it[3] for it in config_items], dim=1)
            present = w != 0
            e = torch.where(present, target, 0.0) - pred
            nums.append((w * e * e).sum(dim=0))
            counts.append(present.sum(dim=0))
            for t, target_t, _, _ in config_items:
                col_term += [t] * target_t.shape[1]
        T = len(self.active)
        idx = torch.tensor(col_term, device=ctx.device)
        num = torch.zeros(T, dtype=ctx.dtype, device=ctx.device).index_add(0, idx, torch.cat(nums))
        cnt = torch.zeros(T, dtype=ctx.dtype, device=ctx.device).index_add(
            0, idx, torch.cat(counts).to(ctx.dtype))
        if fixed:
            cnt = cnt.index_copy(0, torch.tensor(list(fixed), device=ctx.device),
                                 torch.tensor(list(fixed.values()), dtype=ctx.dtype, device=ctx.device))
        lam = torch.tensor([self.weights[n] for n in self.active], dtype=ctx.dtype, device=ctx.device)
        return num * (lam / cnt.clamp(min=1))

    @staticmethod
    def _zero(ctx: BatchContext) -> torch.Tensor:
        for key in ctx.pred:
            v = ctx.pred[key]
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return (v * 0).sum()
        return torch.zeros((), dtype=ctx.dtype, device=ctx.device)
