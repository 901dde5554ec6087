"""scfdata: reference targets and losses for charge-aware interatomic potentials."""

__version__ = "0.1.0"
