"""Losses for charge-aware interatomic potentials, reading scfdata fields (DESIGN.md, Losses).

``LOSSES`` (name -> :class:`LossSpec`), ``WeightedLoss`` (one training stage's weighted sum),
``supported_losses`` (what a dataset supports) and ``check_schedule`` (a MACE_SCF train_schedule
against a dataset). The ``ref`` batch layout and the MACE_SCF name aliases are documented in
``scfdata.losses.batch``; the formulas in ``scfdata.losses.terms``.
"""

from .registry import LOSSES, LossSpec
from .support import check_schedule, supported_losses
from .weighted import WeightedLoss

__all__ = ["LOSSES", "LossSpec", "WeightedLoss", "supported_losses", "check_schedule"]
