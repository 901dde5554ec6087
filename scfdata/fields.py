"""The field registry: one declaration per canonical field.

Ingest, the HDF5 writer and reader, ``scfdata inspect`` and the losses' requirements all ask this
registry for a field's level, per-item shape, dtype and unit; nothing guesses a level from a shape.

A derived field is added by declaring it here (``derived=True``) and writing its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("config", "atom", "molecule")


@dataclass(frozen=True)
class Field:
    """A canonical field.

    ``shape`` is the per-item shape; ``None`` in it means "any length" (the multipole column count,
    checked separately). ``mask_shape`` is the shape of one config's presence mask (``()`` for most,
    ``(3,)`` for the dipole whose components are masked separately).
    """

    name: str
    level: str
    shape: tuple
    dtype: str
    unit: str
    description: str
    derived: bool = False
    mask_shape: tuple = ()
    target: bool = True  # a training target (has a mask and a property weight)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"field {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")


def _f(name, level, shape, unit, description, dtype="float64", **kw) -> Field:
    return Field(name, level, tuple(shape), dtype, unit, description, **kw)


FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        # --- inputs -------------------------------------------------------------------------------
        _f("energy", "config", (), "eV", "total energy"),
        _f("forces", "atom", (3,), "eV/Å", "atomic forces"),
        _f("stress", "config", (3, 3), "eV/Å^3", "stress tensor (ASE sign convention)"),
        _f("virials", "config", (3, 3), "eV", "virial tensor"),
        _f("total_charge", "config", (), "e", "total charge of the config"),
        _f("charges", "atom", (), "e", "atomic partial charges"),
        _f(
            "atomic_multipoles",
            "atom",
            (None,),
            "e·Å^l",
            "atomic multipoles, MACE_SCF order [Q, d_y, d_z, d_x, q_{2,-2..2}] (real spherical)",
        ),
        _f("dipole", "config", (3,), "e·Å", "total dipole moment (Cartesian)", mask_shape=(3,)),
        _f("polarizability", "config", (3, 3), "e·Å^2/V", "polarizability tensor"),
        _f("fermi_level", "config", (), "eV", "Fermi level"),
        _f("external_field", "config", (3,), "V/Å", "applied external electric field"),
        # --- derived ------------------------------------------------------------------------------
        _f("esps", "atom", (), "V", "electrostatic potential at the atom", derived=True),
        _f("fields", "atom", (3,), "V/Å", "electric field at the atom, E = -grad V", derived=True),
        _f(
            "dipole_from_multipoles",
            "config",
            (3,),
            "e·Å",
            "total dipole sum_i q_i (r_i - origin) + sum_i p_i from the atomic multipoles",
            derived=True,
            mask_shape=(3,),
        ),
        _f("molecule", "atom", (), "", "molecule index within its config", dtype="int64", derived=True),
        _f("molecular_forces", "molecule", (3,), "eV/Å", "net force on the molecule", derived=True),
        _f("molecule_centre", "molecule", (3,), "Å", "molecule centre, unwrapped", derived=True),
        _f("molecule_formula", "molecule", (), "", "Hill formula of the molecule", dtype="str",
           derived=True, target=False),
        _f("cluster_virial", "config", (), "eV", "sum_M R_M . F_M over the molecules", derived=True),
        _f("charge_renormalisation", "config", (), "e",
           "total_charge minus the sum of the input charges, removed by renormalise_charges (0: not shifted)",
           derived=True, target=False),
    ]
}

#: Per-config bookkeeping arrays stored under /configs that are not training targets.
CONFIG_META: dict[str, Field] = {
    f.name: f
    for f in [
        _f("pbc", "config", (3,), "", "periodic boundary flags", dtype="bool", target=False),
        _f("cell", "config", (3, 3), "Å", "cell vectors as rows", target=False),
        _f("weight", "config", (), "", "config weight", target=False),
        _f("config_type", "config", (), "", "config type label", dtype="str", target=False),
        _f("source", "config", (2,), "", "(input file index, frame index)", dtype="int64", target=False),
    ]
}

#: Per-atom bookkeeping arrays stored under /atoms.
ATOM_META: dict[str, Field] = {
    f.name: f
    for f in [
        _f("numbers", "atom", (), "", "atomic numbers", dtype="int64", target=False),
        _f("positions", "atom", (3,), "Å", "Cartesian positions", target=False),
    ]
}


def weight_name(field: str) -> str:
    """Name of the per-config property weight of a target field (``/configs/<field>_weight``)."""
    return f"{field}_weight"


def weight_shape(field: str) -> tuple:
    return FIELDS[field].mask_shape


def get(name: str) -> Field:
    """The declaration of any stored array (target, bookkeeping or property weight)."""
    if name in FIELDS:
        return FIELDS[name]
    if name in CONFIG_META:
        return CONFIG_META[name]
    if name in ATOM_META:
        return ATOM_META[name]
    if name.endswith("_weight") and name[: -len("_weight")] in FIELDS:
        base = name[: -len("_weight")]
        return Field(name, "config", weight_shape(base), "float64", "", f"property weight of {base}",
                     target=False)
    raise KeyError(f"unknown field {name!r}; known fields: {', '.join(sorted(FIELDS))}")


INPUT_FIELDS = [n for n, f in FIELDS.items() if not f.derived]
