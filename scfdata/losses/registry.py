"""The loss registry: every loss a MACE_SCF training stage may name, with what it needs.

Each :class:`LossSpec` declares the dataset fields it reads (the first is the *target*, whose mask
says which configs contribute), the model outputs it reads, the model families it suits, its formula
and its normalisation in both conventions (``scfdata`` and ``mace_scf``, see ``scfdata.losses.terms``).
``supported_losses`` and ``check_schedule`` ask this registry; nothing guesses. ``parse_loss_dict`` is
the one validation of a stage loss dict (``WeightedLoss`` and ``scfdata check`` both call it).

Plain Python: this module imports no torch. A spec's ``fn`` (the torch function of ``scfdata.losses.terms``)
is looked up when first used, so the support check, ``scfdata check``, ``inspect`` and ``report`` start
without torch.

Two kinds: ``data`` losses compare the model with reference data; ``model`` (model-internal) terms read
model outputs only (SCF stability, Fermi-level gradient, Fourier-space density, field features) and
need no reference data. Every name MACE_SCF's ``WeightedLoss`` accepts is here.

Model families: ``local`` (short-range models, e.g. MACE), ``charge-aware`` (models predicting atomic
charges / multipoles with long-range electrostatics, e.g. MACE_SCF, LES), ``fixed-point-scf``
(MACE_SCF with self-consistent charge equilibration, which has a Fermi level and responds to fields).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .options import check_options, check_weight, did_you_mean

MODEL_FAMILIES = ("local", "charge-aware", "fixed-point-scf")
_ALL = MODEL_FAMILIES
_CHARGE = ("charge-aware", "fixed-point-scf")
_SCF = ("fixed-point-scf",)


class _TermFunction:
    """``LossSpec.fn``: the function given, else (``None``) ``scfdata.losses.terms.<name>``, imported (with
    torch) on first access only. A data descriptor, so the dataclass ``__init__`` still sets ``fn``."""

    def __get__(self, spec, owner=None):
        if spec is None:
            return None
        fn = spec.__dict__.get("_fn")
        if fn is None:
            fn = getattr(importlib.import_module(f"{__package__}.terms"), spec.name)
            spec.__dict__["_fn"] = fn  # (frozen dataclass: cached past its __setattr__)
        return fn

    def __set__(self, spec, fn) -> None:
        spec.__dict__["_fn"] = fn


@dataclass(frozen=True)
class LossSpec:
    """A loss: name, requirements, formula and the torch function ``fn(ref, pred, convention, **options)``
    (by default ``scfdata.losses.terms.<name>``, imported when ``fn`` is first read)."""

    name: str
    fields: tuple[str, ...]
    outputs: tuple[str, ...]
    models: tuple[str, ...]
    description: str
    formula: str
    normalisation: str  # the scfdata convention
    fn: Callable | None = field(default=None, repr=False, compare=False)  # None: terms.<name>, on first use
    mace_scf: str = ""  # the mace_scf convention (MACE_SCF's arithmetic)
    kind: str = "data"  # "data" or "model" (model-internal: no reference data)
    options: dict = field(default_factory=dict)  # option name -> one-line meaning
    min_molecules: int = 0  # configs need at least this many molecules to contribute
    notes: str = ""

    @property
    def target(self) -> str | None:
        """The field whose per-config mask decides which configs contribute (None: model-internal)."""
        return self.fields[0] if self.fields else None


LossSpec.fn = _TermFunction()  # set after the dataclass is made, so that its __init__ default stays None


_CFG = "Σ w·e² / Σ[w≠0] over configs"
_CFG_N = "Σ w·(e/N)² / Σ[w≠0] over configs"
_SAME = "same as scfdata (MACE_SCF's arithmetic)"
_FALLBACK = ("a batch without the stored targets (MACE_SCF's) computes them from the reference forces "
             "and positions, as MACE_SCF does")


def _spec(name, fields, outputs, models, description, formula, normalisation, mace_scf, **kw) -> LossSpec:
    return LossSpec(name, tuple(fields), tuple(outputs), tuple(models), description, formula,
                    normalisation, None, mace_scf, **kw)


def _internal(name, outputs, description, formula, **kw) -> LossSpec:
    return _spec(name, [], outputs, _SCF, description, formula, "mean over the model's entries", _SAME,
                 kind="model", **kw)


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        # ---- basic --------------------------------------------------------------------------------
        _spec("energy_per_atom", ["energy"], ["energy"], _ALL,
              "total energy error per atom", "(E − Ê)/N", _CFG, "w·w_E·(e/N)², mean over configs"),
        _spec("forces", ["forces"], ["forces"], _ALL,
              "atomic force components", "F_ic − F̂_ic", "Σ w·e² / Σ[w≠0] over atoms × 3",
              "w·w_F·e², mean over atoms × 3"),
        _spec("stress", ["stress"], ["stress"], ("local",),
              "stress tensor; only meaningful for local-source models (a long-range or SCF model's "
              "stress lacks the electrostatic cell derivative)",
              "σ_ab − σ̂_ab", "Σ w·e² / Σ[w≠0] over configs × 9", "w·w_σ·e², mean over configs × 9"),
        # ---- electrostatic ------------------------------------------------------------------------
        _spec("atomic_multipoles", ["atomic_multipoles"], ["density_coefficients"], _CHARGE,
              "atomic charges and multipoles, the first (L+1)² columns of the prediction",
              "p_ik − p̂_ik, k < (L+1)²", "Σ w·e² / Σ[w≠0] over atoms × (L+1)²",
              "w·w_p·e², mean over atoms × (L+1)² (w_p: density_coefficients_weight)",
              options={"max_l": "compare only l ≤ max_l (default: every column the model predicts)"}),
        _spec("total_charge", ["total_charge"], ["density_coefficients"], _CHARGE,
              "total charge, predicted as Σ_i of the l=0 density coefficient", "Q − Σ_i q̂_i", _CFG,
              "w·e², mean over configs (no property weight)"),
        _spec("total_charge_per_atom", ["total_charge"], ["density_coefficients"], _CHARGE,
              "total charge error per atom", "(Q − Σ_i q̂_i)/N", _CFG_N,
              "w·(e/N)², mean over configs (no property weight)"),
        _spec("dipole", ["dipole"], ["dipole"], _CHARGE,
              "total dipole, masked per Cartesian component (dipole_weight)", "μ_c − μ̂_c",
              "Σ w·e² / Σ[w≠0] over configs × 3 (per-component mask)", "w·w_μc·e², mean over configs × 3"),
        _spec("dipole_per_atom", ["dipole"], ["dipole"], _CHARGE,
              "total dipole error per atom, masked per component", "(μ_c − μ̂_c)/N",
              "Σ w·(e/N)² / Σ[w≠0] over configs × 3 (per-component mask)",
              "w·w_μc·(e/N)², mean over configs × 3"),
        _spec("polarizability", ["polarizability"], ["polarizability"], _SCF,
              "polarizability tensor (needs a model that responds to an external field)",
              "α_ab − α̂_ab", "Σ w·e² / Σ[w≠0] over configs × 9", "w·w_α·(e/N)², mean over configs × 9"),
        _spec("fermi_level", ["fermi_level"], ["fermi_level"], _SCF,
              "Fermi level; only for fixed-point SCF models", "μ_F − μ̂_F", _CFG,
              "w·e², mean over configs (no property weight)"),
        _spec("fermi_level_per_atom", ["fermi_level"], ["fermi_level"], _SCF,
              "Fermi level error per atom; only for fixed-point SCF models", "(μ_F − μ̂_F)/N", _CFG_N,
              "w·(e/N)², mean over configs (no property weight)"),
        _spec("esps", ["esps"], ["esps"], _CHARGE,
              "electrostatic potential at the atoms, against the precomputed /atoms/esps (a batch without "
              "it uses the model's esps_dft output, as MACE_SCF does)",
              "V_i − V̂_i", "Σ w·e² / Σ[w≠0] over atoms", "w·w_V·e², mean over atoms"),
        # ---- molecular (experimental) -------------------------------------------------------------
        _spec("molecular_forces", ["molecular_forces", "molecule"], ["forces"], _ALL,
              "experimental: net force on each molecule, from the precomputed molecule indices",
              "F_Mc − Σ_{i∈M} F̂_ic", "Σ w·e² / Σ[w≠0] over molecules × 3",
              "w·w_F·Σ_{M∈config} e²/N, mean over configs × 3 (w_F: forces_weight)",
              min_molecules=2, notes=_FALLBACK),
        _spec("cluster_virial", ["cluster_virial", "molecule", "molecule_centre"], ["forces"], _ALL,
              "experimental: cluster virial W = Σ_M R_M·F_M from the precomputed molecules and centres",
              "W − Σ_M R_M·Σ_{i∈M} F̂_i", _CFG,
              "w·w_cl·e², mean over configs (w_cl: cluster_loss_weight)", min_molecules=2, notes=_FALLBACK),
        _spec("cluster_virial_per_atom", ["cluster_virial", "molecule", "molecule_centre"], ["forces"], _ALL,
              "experimental: cluster virial error per atom", "(W − Σ_M R_M·Σ_{i∈M} F̂_i)/N", _CFG_N,
              "w·w_cl·e²/N (divided by N once), mean over configs", min_molecules=2, notes=_FALLBACK),
        # ---- model-internal (MACE_SCF) ------------------------------------------------------------
        _spec("field_features", [], ["feats_no_mu_model", "feats_no_mu_dft"], _SCF,
              "field features of the model's density against those of the DFT density, weighted by the "
              "ESP weight (esps_weight / electrostatic_potentials_weight) where the batch has one",
              "φ_DFT,if − φ̂_if", "Σ w·e² / Σ[w≠0] over atoms × features",
              "w·w_V·e², mean over atoms × features", kind="model"),
        _internal("fixedpoint_scf_stability", ["perturbing_vector", "perturbed_density"],
                  "SCF stability: the fixed-point map must not amplify a random density perturbation",
                  "act(‖δρ̂_out‖² / ‖δρ_in‖² − offset) per config, act = softplus(β) or relu",
                  options={"smooth": "softplus (true, default) or relu (false)",
                           "beta": "softplus sharpness (default 10)", "offset": "allowed ratio (default 1)"}),
        _internal("fermi_level_gradient", ["dq_dmu"],
                  "penalises a charge that grows with the Fermi level", "relu(dq/dμ)"),
        _internal("final_terms_fixedpoint_scf_stability", ["charges_history"],
                  "SCF convergence: the last two SCF steps' charges should agree", "abs(q_last − q_previous)"),
        _internal("rho_fftn", ["rho_fftn", "rho_fftn_dft", "k_vectors_normed_squared"],
                  "density in Fourier space against the DFT density's, weighted by min(1/‖k‖, 10)",
                  "min(1/‖k‖, 10)·(ρ̂(k) − ρ_DFT(k))²"),
        _internal("fourier_density", ["rho_fftn", "rho_fftn_dft", "k_vectors_normed_squared", "k_vectors_mask"],
                  "density in Fourier space, k-weighted, over the masked k-vectors",
                  "w(k)²·(ρ̂(k) − ρ_DFT(k))², w = min(‖k‖^α, k_min^α), exp(−α‖k‖) or exp(−α‖k‖²)",
                  options={"form": "poly (default), exponential or gaussian",
                           "alpha": "exponent or decay (default 1)", "k_min": "poly cap at k_min^α (default 1)"}),
    ]
}


def markdown_table() -> str:
    """Every loss, side by side in both conventions, as a Markdown table for the README."""
    rows = [
        "| loss | entry error e (ref − pred) | scfdata (default) | mace_scf | data fields | model outputs |",
        "|---|---|---|---|---|---|",
    ]
    for s in LOSSES.values():
        fields = ", ".join(s.fields) if s.fields else "none (model-internal)"
        rows.append(f"| `{s.name}` | {s.formula} | {s.normalisation} | {s.mace_scf} | {fields} | "
                    f"{', '.join(s.outputs)} |")
    return "\n".join(rows)


def parse_loss_dict(loss_dict) -> tuple[dict[str, tuple[float, dict]], list[str]]:
    """``{name: (weight, options)}`` for every valid entry, and one message per problem found.

    The one validation of a stage loss dict: ``WeightedLoss`` and ``scfdata check`` both call it, so an
    option that training would refuse (``max_l: abc``, ``max_l: -1``) fails the check too.
    """
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
        msg = check_weight(name, value) or check_options(name, options, LOSSES[name].options)
        if msg:
            problems.append(msg)
            continue
        parsed[name] = (float(value), options)
    return parsed, problems
