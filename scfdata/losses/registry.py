"""The loss registry: every loss a MACE_SCF training stage may name, with what it needs.

Each :class:`LossSpec` declares the dataset fields it reads (the first is the *target*, whose mask
says which configs contribute), the model outputs it reads, the model families it suits, its formula
and normalisation. ``supported_losses`` and ``check_schedule`` ask this registry; nothing guesses.

Model families: ``local`` (short-range models, e.g. MACE), ``charge-aware`` (models predicting atomic
charges / multipoles with long-range electrostatics, e.g. MACE_SCF, LES), ``fixed-point-scf``
(MACE_SCF with self-consistent charge equilibration, which has a Fermi level and responds to fields).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import terms

MODEL_FAMILIES = ("local", "charge-aware", "fixed-point-scf")
_ALL = MODEL_FAMILIES


@dataclass(frozen=True)
class LossSpec:
    """A loss: name, requirements, formula and the torch function ``fn(ref, pred, **options)``."""

    name: str
    fields: tuple[str, ...]
    outputs: tuple[str, ...]
    models: tuple[str, ...]
    description: str
    formula: str
    normalisation: str
    fn: Callable = field(repr=False)
    options: dict = field(default_factory=dict)  # option name -> one-line meaning
    min_molecules: int = 0  # configs need at least this many molecules to contribute
    notes: str = ""

    @property
    def target(self) -> str:
        """The field whose per-config mask decides which configs contribute."""
        return self.fields[0]


_CFG = "Σ w·e² / Σ[w≠0] over configs"
_CFG_N = "Σ w·(e/N)² / Σ[w≠0] over configs"


def _spec(name, fields, outputs, models, description, formula, normalisation, **kw) -> LossSpec:
    return LossSpec(name, tuple(fields), tuple(outputs), tuple(models), description, formula,
                    normalisation, getattr(terms, name), **kw)


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        # ---- basic --------------------------------------------------------------------------------
        _spec("energy_per_atom", ["energy"], ["energy"], _ALL,
              "total energy error per atom", "(E − Ê)/N", _CFG),
        _spec("forces", ["forces"], ["forces"], _ALL,
              "atomic force components", "F_ic − F̂_ic", "Σ w·e² / Σ[w≠0] over atoms × 3"),
        _spec("stress", ["stress"], ["stress"], ("local",),
              "stress tensor; only meaningful for local-source models (a long-range or SCF model's "
              "stress lacks the electrostatic cell derivative)",
              "σ_ab − σ̂_ab", "Σ w·e² / Σ[w≠0] over configs × 9"),
        # ---- electrostatic ------------------------------------------------------------------------
        _spec("atomic_multipoles", ["atomic_multipoles"], ["density_coefficients"],
              ("charge-aware", "fixed-point-scf"),
              "atomic charges and multipoles, the first (L+1)² columns of the prediction",
              "p_ik − p̂_ik, k < (L+1)²", "Σ w·e² / Σ[w≠0] over atoms × (L+1)²",
              options={"max_l": "compare only l ≤ max_l (default: every column the model predicts)"}),
        _spec("total_charge", ["total_charge"], ["density_coefficients"], ("charge-aware", "fixed-point-scf"),
              "total charge, predicted as Σ_i of the l=0 density coefficient", "Q − Σ_i q̂_i", _CFG),
        _spec("total_charge_per_atom", ["total_charge"], ["density_coefficients"],
              ("charge-aware", "fixed-point-scf"),
              "total charge error per atom", "(Q − Σ_i q̂_i)/N", _CFG_N),
        _spec("dipole", ["dipole"], ["dipole"], ("charge-aware", "fixed-point-scf"),
              "total dipole, masked per Cartesian component (dipole_weight)", "μ_c − μ̂_c",
              "Σ w·e² / Σ[w≠0] over configs × 3 (per-component mask)"),
        _spec("dipole_per_atom", ["dipole"], ["dipole"], ("charge-aware", "fixed-point-scf"),
              "total dipole error per atom, masked per component", "(μ_c − μ̂_c)/N",
              "Σ w·(e/N)² / Σ[w≠0] over configs × 3 (per-component mask)"),
        _spec("polarizability", ["polarizability"], ["polarizability"], ("fixed-point-scf",),
              "polarizability tensor (needs a model that responds to an external field)",
              "α_ab − α̂_ab", "Σ w·e² / Σ[w≠0] over configs × 9"),
        _spec("fermi_level", ["fermi_level"], ["fermi_level"], ("fixed-point-scf",),
              "Fermi level; only for fixed-point SCF models", "μ_F − μ̂_F", _CFG),
        _spec("fermi_level_per_atom", ["fermi_level"], ["fermi_level"], ("fixed-point-scf",),
              "Fermi level error per atom; only for fixed-point SCF models", "(μ_F − μ̂_F)/N", _CFG_N),
        _spec("esps", ["esps"], ["esps"], ("charge-aware", "fixed-point-scf"),
              "electrostatic potential at the atoms, against the precomputed /atoms/esps",
              "V_i − V̂_i", "Σ w·e² / Σ[w≠0] over atoms"),
        # ---- molecular (experimental) -------------------------------------------------------------
        _spec("molecular_forces", ["molecular_forces", "molecule"], ["forces"], _ALL,
              "experimental: net force on each molecule, from the precomputed molecule indices",
              "F_Mc − Σ_{i∈M} F̂_ic", "Σ w·e² / Σ[w≠0] over molecules × 3", min_molecules=2),
        _spec("cluster_virial", ["cluster_virial", "molecule", "molecule_centre"], ["forces"], _ALL,
              "experimental: cluster virial W = Σ_M R_M·F_M from the precomputed molecules and centres",
              "W − Σ_M R_M·Σ_{i∈M} F̂_i", _CFG, min_molecules=2),
        _spec("cluster_virial_per_atom", ["cluster_virial", "molecule", "molecule_centre"], ["forces"], _ALL,
              "experimental: cluster virial error per atom", "(W − Σ_M R_M·Σ_{i∈M} F̂_i)/N", _CFG_N,
              min_molecules=2),
    ]
}


def markdown_table() -> str:
    """Every loss as a Markdown table (formula, normalisation, requirements) for the README."""
    rows = [
        "| loss | entry error e (ref − pred) | normalisation | data fields | model outputs | models |",
        "|---|---|---|---|---|---|",
    ]
    for s in LOSSES.values():
        rows.append(f"| `{s.name}` | {s.formula} | {s.normalisation} | {', '.join(s.fields)} | "
                    f"{', '.join(s.outputs)} | {', '.join(s.models)} |")
    return "\n".join(rows)
