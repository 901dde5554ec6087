"""Losses for charge-aware interatomic potentials, reading scfdata fields (DESIGN.md, Losses).

``LOSSES`` (name -> :class:`LossSpec`: every name MACE_SCF accepts), ``WeightedLoss`` (one training
stage's weighted sum, in the ``scfdata`` or ``mace_scf`` convention), ``supported_losses`` (what a
dataset supports) and ``check_schedule`` (a MACE_SCF train_schedule against a dataset). The ``ref``
batch layout and the MACE_SCF name aliases are documented in ``scfdata.losses.batch``, MACE_SCF's
per-config molecule ids in ``scfdata.losses.molecules``, the formulas and both conventions in
``scfdata.losses.terms``, the model-internal terms in ``scfdata.losses.internal``.

Importing the package imports no torch: the registry, the support check and the option validation are
plain Python; ``WeightedLoss`` (and with it torch) is imported when it is first asked for.
"""

from .registry import LOSSES, LossSpec
from .support import check_schedule, supported_losses

__all__ = ["LOSSES", "LossSpec", "WeightedLoss", "supported_losses", "check_schedule"]


def __getattr__(name: str):
    if name == "WeightedLoss":  # torch: only for training and evaluation
        from .weighted import WeightedLoss

        globals()[name] = WeightedLoss
        return WeightedLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
