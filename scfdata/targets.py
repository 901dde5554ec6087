"""The registry of derived targets: one entry per target, read by `scfdata derive`, the workflow's rules
(workflows/rules/derive.smk makes one rule per entry), its config check (common.smk) and the docs.

An entry says what the target needs (canonical fields a dataset must map, other targets), what it writes,
its settings (a JSON Schema with defaults: the `reference.<name>` block of the workflow config) and the
function that computes it, named ``"module:function"`` and imported only when called (the modules that
compute targets import this registry's neighbours, never each other in a circle). A new target is one
module with its function plus one entry in ``TARGETS``.

Per dataset, :func:`plan` decides which targets are derived: ``enabled: auto`` (the default) derives a
target when the dataset's keys map its inputs and skips it with a reason otherwise; ``enabled: true``
for a dataset that cannot supply the inputs is a :class:`ConfigError`, as is a target that is both
mapped from the input files and derived.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

ENABLED_SCHEMA = {
    "description": "auto (default): derived where the dataset's keys map the inputs, skipped with the reason "
                   "elsewhere; true: required (a dataset that cannot supply it stops the run); false: off",
    "enum": ["auto", True, False],
    "default": "auto",
}


class ConfigError(ValueError):
    """A reference block that cannot work for a dataset (one line: dataset, target, what to do)."""


@dataclass(frozen=True)
class Variant:
    """Another implementation of a target, chosen by its `preset` setting."""

    function: str                       # "module:function" (cols, settings) -> Derived
    check: str                          # "module:function" (settings) -> settings; ValueError when bad
    requires: tuple[str, ...] = ()      # importable modules it needs (checked before any job)
    install: str = ""                   # "module:function" () -> the install command for `requires`


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    function: str                                   # "module:function" (cols, settings) -> Derived
    outputs: tuple[str, ...]                        # fields it writes
    inputs: Callable[[dict], list[tuple[str, ...]]] = lambda s: []   # settings -> any-of groups of fields
    depends: tuple[str, ...] = ()                   # targets whose fragments it reads
    settings: dict = field(default_factory=dict)    # JSON Schema properties of reference.<name>
    settings_from: tuple[str, ...] = ()             # targets whose settings it shares (fields: esps)
    check: str = ""                                 # "module:function" (settings) -> settings
    presets: dict[str, Variant] = field(default_factory=dict)
    warm_up: str = ""                               # "module:function" (name, datasets) compiling kernels
    mapped_conflict: str = ""                       # advice when an output is mapped (then always an error)

    def defaults(self) -> dict:
        return {k: copy.deepcopy(v["default"]) for k, v in self.settings.items() if "default" in v}

    def variant(self, settings: dict) -> Variant:
        preset = settings.get("preset")
        if preset is None:
            return Variant(self.function, self.check)
        if preset not in self.presets:
            known = " or ".join(repr(k) for k in sorted(self.presets)) or "absent"
            raise ConfigError(f"Unknown reference.{self.name}.preset {preset!r}. Must be {known} (or no preset).")
        return self.presets[preset]


def _call(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


_ESP_SOURCES = [("atomic_multipoles", "charges")]
_ESPS_PRESET = Variant(function="scfdata.derive_esp_preset:preset_esps",
                       check="scfdata.derive_esp_preset:preset_settings",
                       requires=("graph_longrange", "mace"),
                       install="scfdata.derive_esp_preset:install_hint")
_FIELDS_PRESET = Variant(**{**_ESPS_PRESET.__dict__, "function": "scfdata.derive_esp_preset:preset_fields"})

#: Every target, in dependency order (a target's `depends` come before it).
TARGETS: dict[str, Target] = {t.name: t for t in [
    Target(
        name="molecules",
        description="molecule of every atom (covalent connectivity with periodic images, or a mapped key), "
                    "unwrapped molecule centres and formulae",
        function="scfdata.derive_molecular:derive_molecules",
        check="scfdata.derive_molecular:molecules_settings",
        outputs=("molecule", "molecule_centre", "molecule_formula"),
        inputs=lambda s: [("molecule",)] if s.get("source") == "key" else [],
        mapped_conflict="set reference.molecules.source: key to use the mapped molecule ids, or remove "
                        "`molecule` from the dataset's keys",
        settings={
            "source": {"description": "connectivity (covalent radii with periodic images) or key (a mapped "
                                      "per-atom `molecule` array)",
                       "enum": ["connectivity", "key"], "default": "connectivity"},
            "covalent_scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 5, "default": 1.2},
            "centre": {"description": "molecule centre R_M: geometric (mean of the atom positions, MACE_SCF's) "
                                      "or mass (mass-weighted)",
                       "enum": ["geometric", "mass"], "default": "geometric"},
            "pair_overrides": {"description": "optional bond cutoffs in Å per element pair, e.g. {Na-Cl: 0.0}",
                               "type": ["object", "null"], "default": None,
                               "additionalProperties": {"type": "number", "minimum": 0, "maximum": 10}},
        },
    ),
    Target(
        name="esps",
        description="electrostatic potential at every atom from the DFT charges or multipoles (V)",
        function="scfdata.derive:derive_esps",
        check="scfdata.derive:esp_settings",
        outputs=("esps",),
        inputs=lambda s: _ESP_SOURCES,
        presets={"mace_scf": _ESPS_PRESET},
        warm_up="scfdata.derive:warm_up_esp_kernels",
        settings={
            "preset": {"description": "mace_scf = what a MACE_SCF model computes internally (overrides the "
                                      "settings below)", "enum": ["mace_scf"]},
            "source": {"enum": ["multipoles", "charges"], "default": "multipoles"},
            "max_l": {"type": "integer", "minimum": 0, "maximum": 2, "default": 1},
            "smearing_width": {"description": "Gaussian width σ in Å (0: point multipoles)",
                               "type": "number", "minimum": 0, "maximum": 10, "default": 0.0},
            "self_interaction": {"enum": ["exclude", "include"], "default": "exclude"},
            "boundary": {"enum": ["auto", "realspace", "pbc", "slab", "molecule_in_box"], "default": "auto"},
            "tolerance": {"type": "number", "minimum": 1.0e-12, "maximum": 0.1, "default": 1.0e-6},
            "kspace_cutoff": {"description": "preset mace_scf only: reciprocal cut-off in 1/Å (e.g. a model's "
                                             "own); default converged from tolerance",
                              "type": "number", "exclusiveMinimum": 0, "maximum": 100},
        },
    ),
    Target(
        name="fields",
        description="electric field E = -grad V at every atom, with the esps settings (V/Å)",
        function="scfdata.derive:derive_fields",
        check="scfdata.derive:esp_settings",
        outputs=("fields",),
        inputs=lambda s: _ESP_SOURCES,
        settings_from=("esps",),
        presets={"mace_scf": _FIELDS_PRESET},
        warm_up="scfdata.derive:warm_up_esp_kernels",
    ),
    Target(
        name="dipoles",
        description="dipole from the charges/multipoles, sum q_i r_i + sum p_i, masked by boundary (e·Å)",
        function="scfdata.derive:derive_dipoles",
        outputs=("dipole_from_multipoles",),
        inputs=lambda s: _ESP_SOURCES,
        settings={"origin": {"enum": ["zero", "centre_of_mass", "centre_of_geometry"], "default": "zero"}},
    ),
    Target(
        name="molecular_forces",
        description="net force on every molecule, sum of its atoms' forces (eV/Å)",
        function="scfdata.derive_molecular:derive_molecular_forces",
        outputs=("molecular_forces",),
        inputs=lambda s: [("forces",)],
        depends=("molecules",),
    ),
    Target(
        name="cluster_virial",
        description="sum_M R_M . F_M per open-boundary config (eV)",
        function="scfdata.derive_molecular:derive_cluster_virial",
        outputs=("cluster_virial",),
        inputs=lambda s: [("forces",)],
        depends=("molecules", "molecular_forces"),
    ),
]}


def reference_schema(with_defaults: bool = True) -> dict:
    """JSON Schema of a `reference:` block (``with_defaults=False`` for a dataset's own block, which merges
    over the global one key by key, so it must not be filled with defaults)."""
    def strip(d):
        return {k: strip(v) for k, v in d.items() if k != "default"} if isinstance(d, dict) else d

    props = {}
    for t in TARGETS.values():
        block = {"enabled": ENABLED_SCHEMA, **t.settings}
        block = block if with_defaults else {k: strip(v) for k, v in block.items()}
        props[t.name] = {"description": t.description, "type": "object", "additionalProperties": False,
                         "properties": block, **({"default": {}} if with_defaults else {})}
    return {"type": "object", "additionalProperties": False, "properties": props,
            **({"default": {}} if with_defaults else {})}


def merged_reference(global_block: dict | None, dataset_block: dict | None = None) -> dict:
    """Per target: schema defaults, then the global `reference.<t>`, then the dataset's, key by key."""
    out = {}
    for name, t in TARGETS.items():
        out[name] = {"enabled": "auto", **t.defaults(), **((global_block or {}).get(name) or {}),
                     **((dataset_block or {}).get(name) or {})}
    return out


def settings_of(name: str, reference: dict) -> dict:
    """The settings a target's function receives: its block (with those it shares) without `enabled`."""
    t = TARGETS[name]
    merged = {}
    for other in (*t.settings_from, name):
        merged.update({k: v for k, v in reference[other].items() if k != "enabled"})
    return merged


def check_settings(name: str, settings: dict) -> dict:
    """The target's own settings check (ValueError with one line when the engine would refuse them)."""
    v = TARGETS[name].variant(settings)
    return _call(v.check)(settings) if v.check else settings


def derive(name: str, cols, settings: dict):
    """Compute target ``name`` for the columns of one shard: a :class:`scfdata.derive.Derived`."""
    return _call(TARGETS[name].variant(settings).function)(cols, settings)


def warm_up(name: str, datasets: list[dict]) -> list[str]:
    """Compile the kernels target ``name`` will run once (numba caches them on disk), for the datasets that
    derive it (``[{"settings": settings_of(...), "mapped": [names the keys map]}, ...]``); returns what ran."""
    ref = TARGETS[name].warm_up
    return _call(ref)(name, datasets) if ref else []


def plan(reference: dict, mapped: set[str], where: str) -> tuple[list[str], dict[str, str]]:
    """(targets derived, {skipped target: reason}) for one dataset.

    ``reference``: :func:`merged_reference` of the dataset; ``mapped``: canonical names its keys map;
    ``where``: e.g. ``datasets.water`` (named in errors). Raises :class:`ConfigError` for ``enabled: true``
    when the dataset cannot supply the target, and for a target both mapped and derived.
    """
    mapped = set(mapped) | ({"atomic_multipoles"} if "atomic_dipoles" in mapped else set())
    derived: list[str] = []
    skipped: dict[str, str] = {}
    for name, t in TARGETS.items():
        block = reference[name]
        enabled = block.get("enabled", "auto")
        if enabled is False:
            skipped[name] = "switched off (enabled: false)"
            continue
        settings = settings_of(name, reference)
        needs = t.inputs(settings)
        clash = sorted((set(t.outputs) & mapped) - {f for g in needs for f in g})
        if clash and (enabled is True or t.mapped_conflict):
            advice = t.mapped_conflict or (f"remove {clash[0]} from the dataset's keys (derive it), or set "
                                           f"{where}.reference.{name}.enabled: auto or false (keep the mapped values)")
            raise ConfigError(f"{where}: `{clash[0]}` is mapped from the input files and is also derived by "
                              f"reference.{name}: {advice}")
        if clash:
            skipped[name] = f"{clash[0]} is mapped from the input files (the DFT values are kept)"
            continue
        reason = ""
        off = [d for d in t.depends if d not in derived]
        missing = [g for g in needs if not set(g) & mapped]
        if off:
            reason = f"needs the {off[0]} target, which is skipped ({skipped.get(off[0], 'not derived')})"
        elif missing:
            reason = f"needs {' or '.join(missing[0])} in the dataset's keys (not mapped)"
        if not reason:
            derived.append(name)
        elif enabled is True:
            fix = (f"map {' or '.join(missing[0])} in {where}.keys" if missing and not off
                   else f"enable reference.{off[0]} for it")
            raise ConfigError(f"{where}: reference.{name} is enabled: true, but it {reason}: {fix}, or set "
                              f"{where}.reference.{name}.enabled: auto (skip where impossible) or false")
        else:
            skipped[name] = reason
    return derived, skipped


def missing_modules(name: str, settings: dict) -> list[str]:
    return [m for m in TARGETS[name].variant(settings).requires if importlib.util.find_spec(m) is None]


def install_hint(name: str, settings: dict) -> str:
    v = TARGETS[name].variant(settings)
    return _call(v.install)() if v.install else ""
