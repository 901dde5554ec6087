"""``WeightedLoss``: the loss of one training stage, Σ_t λ_t · L_t over the stage's loss dict.

A stage loss dict maps loss names (``LOSSES``) to a weight λ (int or float, ≥ 0, finite) or to
``{weight: λ, <option>: value, ...}`` with the options the loss declares. A term with λ = 0 is not
computed. Every call logs one DEBUG line on the ``scfdata.losses`` logger::

    loss breakdown: energy_per_atom: 1.23e-05, forces: 4.5e-06,

(each weighted term λ_t·L_t as a plain number, the format ``scfdata plot-losses`` reads back).

Not supported: per-term schedules inside a stage (use separate stages), loss names outside ``LOSSES``.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from numbers import Real

import torch

from .batch import BatchContext
from .registry import LOSSES
from .terms import ENTRIES, masked_mean, masked_sums

logger = logging.getLogger("scfdata.losses")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_weight(name: str, w) -> str | None:
    if isinstance(w, bool) or not isinstance(w, Real):
        return f"loss {name!r}: weight must be a number ≥ 0, got {w!r} ({type(w).__name__})"
    if not math.isfinite(float(w)) or w < 0:
        return f"loss {name!r}: weight must be a finite number ≥ 0, got {w!r}"
    return None


def parse_loss_dict(loss_dict) -> tuple[dict[str, tuple[float, dict]], list[str]]:
    """``{name: (weight, options)}`` for every valid entry, and one message per problem found."""
    problems: list[str] = []
    parsed: dict[str, tuple[float, dict]] = {}
    if not isinstance(loss_dict, Mapping):
        return {}, [f"a stage loss must be a mapping {{loss name: weight}}, got {type(loss_dict).__name__}"]
    for name, value in loss_dict.items():
        if name not in LOSSES:
            hint = did_you_mean(name, LOSSES) or f" (known: {', '.join(LOSSES)})"
            problems.append(f"unknown loss {name!r}{hint}")
            continue
        options: dict = {}
        if isinstance(value, Mapping):
            if "weight" not in value:
                problems.append(f"loss {name!r}: a mapping value needs a 'weight' key, got keys {sorted(value)}")
                continue
            options = {k: v for k, v in value.items() if k != "weight"}
            value = value["weight"]
            allowed = LOSSES[name].options
            bad = [k for k in options if k not in allowed]
            if bad:
                known = ", ".join(allowed) if allowed else "none"
                problems.append(f"loss {name!r}: unknown option(s) {', '.join(map(repr, bad))}"
                                f"{did_you_mean(bad[0], allowed)} (options of {name}: {known})")
                continue
        msg = _check_weight(name, value)
        if msg:
            problems.append(msg)
            continue
        parsed[name] = (float(value), options)
    return parsed, problems


class WeightedLoss:
    """The weighted sum of a stage's losses; ``loss_fn(ref, pred) -> scalar tensor``.

    >>> loss_fn = WeightedLoss({"energy_per_atom": 1.0, "forces": 10, "esps": {"weight": 0.1}})
    >>> loss = loss_fn(batch, model_outputs); loss.backward(); loss_fn.last_breakdown
    {'energy_per_atom': 0.0012, 'forces': 0.031, 'esps': 0.0004}
    """

    def __init__(self, stage_loss_dict: Mapping):
        parsed, problems = parse_loss_dict(stage_loss_dict)
        if problems:
            raise ValueError("invalid stage loss dict: " + "; ".join(problems))
        self.weights: dict[str, float] = {n: w for n, (w, _) in parsed.items()}
        self.options: dict[str, dict] = {n: o for n, (_, o) in parsed.items()}
        self.active = [n for n, w in self.weights.items() if w != 0.0]
        self.last_breakdown: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"WeightedLoss({self.weights})"

    def terms(self, ref, pred) -> dict[str, torch.Tensor]:
        """Each active term, unweighted, as a tensor (for evaluation tables)."""
        ctx = BatchContext(ref, pred)
        out = {}
        for name in self.active:
            out[name] = masked_mean(*ENTRIES[name](ctx, **self.options[name]))
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
        reduced one by one (``masked_sums``); one index_add then sums each term's columns. Same formula
        as ``masked_mean``.
        """
        B = ctx.n_configs
        config_items: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        nums, counts, col_term = [], [], []
        for t, name in enumerate(self.active):
            target, pred, w = ENTRIES[name](ctx, **self.options[name])
            if target.shape[0] == B:
                config_items.append((t, target, pred, w.expand_as(target)))
            else:  # atoms or molecules: large, one weight per row; reduced on its own
                num, count = masked_sums(target, pred, w)
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
        lam = torch.tensor([self.weights[n] for n in self.active], dtype=ctx.dtype, device=ctx.device)
        return num * (lam / cnt.clamp(min=1))

    @staticmethod
    def _zero(ctx: BatchContext) -> torch.Tensor:
        for key in ctx.pred:
            v = ctx.pred[key]
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return (v * 0).sum()
        return torch.zeros((), dtype=ctx.dtype, device=ctx.device)
