"""What MACE and MACE_SCF read, built from scfdata columns (pure numpy: no files, no h5py).

Two targets:

- **MACE's HDF5 layout** (``config_batch_0/config_j/...``): :func:`mace_block` turns a
  :class:`~scfdata.columns.Columns` block into a :class:`MaceBlock` (per-config slices of every
  property, under the names MACE_SCF's loader reads, with the property weight 0 where a target is
  absent, and "None" with weight 0 for every property MACE reads itself that the block lacks, so that
  MACE's reader never fills its default weight 1.0); :mod:`scfdata.h5io_mace` writes it.
- **extxyz**: :func:`extxyz_text` formats a block as frames whose derived fields are ``atoms.arrays`` /
  ``atoms.info`` keys (names configurable), with every float written in its shortest exact form, so
  ``scfdata ingest`` with :func:`heads_config`'s key mapping reads back identical arrays.

Not supported: component-wise masks of fields other than ``dipole`` in extxyz (only ``dipole`` has a
3-vector ``config_dipole_weight`` in MACE/MACE_SCF; other masked components are written as values
only); molecule-level fields (``molecular_forces``, ``molecule_centre``) go to extxyz as flattened
info arrays that neither MACE_SCF nor ``scfdata ingest`` read back (derive them again instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase.data import chemical_symbols

from . import fields
from .columns import Columns

#: scfdata canonical name -> the property name MACE_SCF's loader reads (identical when not listed).
MACE_NAMES = {"esps": "electrostatic_potentials", "molecule": "molID"}

#: Properties MACE's ``AtomicData.from_config`` reads itself, replacing an absent one ("None") with a
#: default. Every other property reaches the batch through MACE's pass-through, which drops a "None"
#: value so that batches mixing configs with and without it cannot be collated: those are written
#: always (their stored values, zeros where absent) with property weight 0 where absent. MACE fills
#: weight 1.0 for a missing energy, forces, stress, virials, dipole, charges or polarizability weight:
#: a property of this set that the block lacks is written as "None" with weight 0.
MACE_NONE_OK = {"energy", "forces", "stress", "virials", "dipole", "charges", "polarizability", "total_charge",
                "total_spin", "elec_temp", "fermi_level", "external_field", "density_coefficients"}

#: Keys ASE's extxyz reader moves from info/arrays into ``atoms.calc.results`` (where MACE's loader
#: does not look) or reserves for itself.
_ASE_RESERVED = {
    "energy", "free_energy", "forces", "stress", "stresses", "dipole", "charges", "magmom", "magmoms",
    "energies", "initial_charges", "initial_magmoms", "numbers", "positions", "species", "pos",
    "Properties", "Lattice", "pbc", "config_type", "config_weight",
}


def mace_name(name: str) -> str:
    """The MACE/MACE_SCF property name of a canonical field."""
    return MACE_NAMES.get(name, name)


def exported_fields(cols: Columns) -> list[str]:
    """Target fields held by the block, in registry order (bookkeeping and string fields excluded)."""
    held = set(cols.configs) | set(cols.atoms) | set(cols.molecules)
    return [n for n, f in fields.FIELDS.items() if n in held and f.target and f.dtype != "str"]


def present(cols: Columns, name: str) -> np.ndarray:
    """(n_configs,) bool: the config holds the target (for the dipole: any component)."""
    m = cols.masks.get(name)
    if m is None:
        return np.zeros(cols.n_configs, dtype=bool)
    m = np.asarray(m, dtype=bool)
    return m.reshape(len(m), -1).any(axis=1)


def property_weight(cols: Columns, name: str) -> np.ndarray:
    """Per-config property weight, 0 where the target is absent ((n,), (n, 3) for the dipole)."""
    shape = (cols.n_configs,) + fields.FIELDS[name].mask_shape
    w = np.asarray(cols.configs.get(fields.weight_name(name), np.ones(shape)), dtype=np.float64)
    m = np.asarray(cols.masks.get(name, np.zeros(shape, dtype=bool)), dtype=bool)
    return np.where(m, np.broadcast_to(w, shape), 0.0)


def _level_ptr(cols: Columns, level: str) -> np.ndarray | None:
    return {"atom": cols.atom_ptr, "molecule": cols.molecule_ptr, "config": None}[level]


# ------------------------------------------------------------------------------------------------
# key names
# ------------------------------------------------------------------------------------------------


def parse_names(spec: str | None) -> dict[str, str]:
    """``"esps=V_DFT,energy=E_DFT"`` -> {canonical: key}. MACE_SCF spellings are accepted on the left."""
    out: dict[str, str] = {}
    if not spec:
        return out
    inverse = {v: k for k, v in MACE_NAMES.items()}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--names: expected NAME=KEY items separated by commas, found {item!r}")
        name, key = (s.strip() for s in item.split("=", 1))
        name = inverse.get(name, name)
        if name not in fields.FIELDS:
            raise ValueError(f"--names: unknown field {name!r}; fields are: {', '.join(fields.FIELDS)}")
        if not key or any(c in key for c in " =\"'"):
            raise ValueError(f"--names: key for {name!r} must be a non-empty word without spaces, found {key!r}")
        out[name] = key
    return out


def extxyz_keys(names: list[str], renames: dict[str, str] | None = None) -> dict[str, str]:
    """Canonical field -> extxyz key: ``REF_<MACE_SCF name>`` unless renamed.

    A key that ASE's reader would move into ``atoms.calc`` (``energy``, ``forces``, ...) or that it
    reserves is refused: MACE and MACE_SCF read only ``atoms.info``/``atoms.arrays``.
    """
    renames = renames or {}
    keys = {n: renames.get(n, f"REF_{mace_name(n)}") for n in names}
    bad = {n: k for n, k in keys.items() if k in _ASE_RESERVED}
    if bad:
        raise ValueError(
            f"extxyz keys {bad} are reserved by ASE's extxyz reader (it moves them into atoms.calc, "
            "where MACE and MACE_SCF do not look): choose other names with --names"
        )
    clash = [k for k in set(keys.values()) if list(keys.values()).count(k) > 1]
    if clash:
        raise ValueError(f"extxyz keys {sorted(clash)} are used for more than one field: fix --names")
    return keys


def heads_config(keys: dict[str, str], head: str = "Default") -> dict:
    """A MACE_SCF ``heads:`` block reading the exported extxyz (molecule-level fields left out)."""
    info, arrays = {}, {}
    for name, key in keys.items():
        level = fields.FIELDS[name].level
        if level == "config":
            info[mace_name(name)] = key
        elif level == "atom":
            arrays[mace_name(name)] = key
    return {"heads": {head: {"info_keys": info, "arrays_keys": arrays}}}


# ------------------------------------------------------------------------------------------------
# extxyz
# ------------------------------------------------------------------------------------------------


def _fmt_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "T" if x else "F"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


def _fmt_value(v) -> str:
    v = np.asarray(v)
    if v.dtype.kind in "US":
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if v.ndim == 0:
        return _fmt_scalar(v.item())
    return '"' + " ".join(_fmt_scalar(x) for x in v.ravel().tolist()) + '"'


def _as_text(a: np.ndarray) -> np.ndarray:
    """Element-wise shortest exact text (numpy's dragon4), vectorised."""
    if a.dtype.kind == "b":
        return np.where(a, "T", "F")
    if a.dtype.kind in "iu":
        return a.astype(str)
    return np.asarray(a, dtype=np.float64).astype(str)


def extxyz_text(cols: Columns, keys: dict[str, str]) -> str:
    """The block as extended-XYZ frames (one per config), readable by ``ase.io.read``.

    A target absent from a config (mask False and stored as zeros) is left out of that frame, so it
    stays absent on re-ingest; a stored target that is masked off (switched off by a zero weight, or a
    derived value masked where it has no meaning) is written with ``config_<name>_weight=0``.
    ``config_dipole_weight`` is always written with the dipole.
    """
    n = cols.n_configs
    aptr, mptr = cols.atom_ptr, cols.molecule_ptr
    names = [nm for nm in exported_fields(cols) if nm in keys]
    symbols = np.asarray(chemical_symbols, dtype=object)[np.asarray(cols.atoms["numbers"], dtype=np.int64)]
    pos_txt = _as_text(np.asarray(cols.atoms["positions"]).reshape(-1, 3))
    base_lines = symbols.astype(str)
    for c in range(3):
        base_lines = np.char.add(np.char.add(base_lines, " "), pos_txt[:, c])

    atom_cols: dict[str, np.ndarray] = {}
    atom_spec: dict[str, str] = {}
    for nm in names:
        f = fields.FIELDS[nm]
        if f.level != "atom":
            continue
        a = np.asarray(cols.atoms[nm])
        a2 = a.reshape(len(a), -1)
        kind = "I" if (f.dtype == "int64" or a.dtype.kind in "iu") else "R"
        if kind == "I":
            a2 = a2.astype(np.int64)
        txt = _as_text(a2)
        line = np.full(len(a2), "", dtype=str)
        for c in range(a2.shape[1]):
            line = np.char.add(np.char.add(line, " "), txt[:, c])
        atom_cols[nm] = line
        atom_spec[nm] = f"{keys[nm]}:{kind}:{a2.shape[1]}"

    pres = {nm: present(cols, nm) for nm in names}
    nonzero = {}
    for nm in names:
        f = fields.FIELDS[nm]
        a = np.asarray(cols.level(f.level)[nm])
        flat = a.reshape(len(a), -1) != 0
        if f.level == "config":
            nonzero[nm] = flat.any(axis=1)
        else:
            ptr = aptr if f.level == "atom" else mptr
            per_item = flat.any(axis=1).astype(np.int64)
            csum = np.concatenate([[0], np.cumsum(per_item)])
            nonzero[nm] = (csum[ptr[1:]] - csum[ptr[:-1]]) > 0
    wts = {nm: cols.configs.get(fields.weight_name(nm)) for nm in names}

    cell = np.asarray(cols.configs["cell"]).reshape(-1, 3, 3)
    pbc = np.asarray(cols.configs["pbc"], dtype=bool).reshape(-1, 3)
    weight = np.asarray(cols.configs.get("weight", np.ones(n)), dtype=np.float64)
    config_type = cols.configs.get("config_type")

    out: list[str] = []
    for i in range(n):
        a0, a1 = int(aptr[i]), int(aptr[i + 1])
        written = [nm for nm in names if pres[nm][i] or nonzero[nm][i]]
        props = ["species:S:1", "pos:R:3"] + [atom_spec[nm] for nm in written if nm in atom_spec]
        info = []
        if pbc[i].any() or cell[i].any():
            info.append(f"Lattice={_fmt_value(cell[i])}")
        info.append("Properties=" + ":".join(props))
        for nm in written:
            f = fields.FIELDS[nm]
            if f.level == "config":
                info.append(f"{keys[nm]}={_fmt_value(np.asarray(cols.configs[nm][i]))}")
            elif f.level == "molecule":
                info.append(f"{keys[nm]}={_fmt_value(np.asarray(cols.molecules[nm][mptr[i]:mptr[i + 1]]))}")
            w = wts[nm]
            if nm == "dipole":
                wi = np.asarray(w[i] if w is not None else np.ones(3), dtype=np.float64)
                info.append(f"config_dipole_weight={_fmt_value(wi)}")
                continue
            if f.mask_shape:
                continue  # no per-component weight key outside the dipole (see module docstring)
            wi = np.asarray(w[i] if w is not None else 1.0)
            if not pres[nm][i]:
                wi = np.asarray(0.0)  # stored but masked off: keep it off on re-ingest and in MACE
            if float(wi) != 1.0:
                info.append(f"config_{nm}_weight={_fmt_value(float(wi))}")
                if mace_name(nm) != nm:
                    info.append(f"config_{mace_name(nm)}_weight={_fmt_value(float(wi))}")
        if config_type is not None:
            info.append(f"config_type={_fmt_value(np.asarray(str(config_type[i])))}")
        if weight[i] != 1.0:
            info.append(f"config_weight={_fmt_value(weight[i])}")
        info.append(f"pbc={_fmt_value(pbc[i])}")
        lines = base_lines[a0:a1]
        for nm in written:
            if nm in atom_cols:
                lines = np.char.add(lines, atom_cols[nm][a0:a1])
        out.append(f"{a1 - a0}\n{' '.join(info)}\n" + "\n".join(lines.tolist()) + "\n")
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# MACE HDF5 records
# ------------------------------------------------------------------------------------------------


@dataclass
class MaceBlock:
    """Everything MACE's ``save_configurations_as_HDF5`` stores for a block of configs.

    ``properties[name] = (values, ptr)``: ``ptr`` None for per-config values (row i is config i),
    else the offsets of config i's rows. ``present[name][i]`` False means MACE's "None" (absent).
    """

    atom_ptr: np.ndarray
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    weight: np.ndarray
    config_type: np.ndarray
    head: np.ndarray
    properties: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    property_weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_configs(self) -> int:
        return len(self.atom_ptr) - 1


def mace_block(cols: Columns, head: str = "Default", renames: dict[str, str] | None = None) -> MaceBlock:
    """Build the MACE records of a block: properties under MACE_SCF's names (or ``renames``)."""
    renames = renames or {}
    n = cols.n_configs
    ct = cols.configs.get("config_type")
    blk = MaceBlock(
        atom_ptr=cols.atom_ptr,
        numbers=np.asarray(cols.atoms["numbers"], dtype=np.int64),
        positions=np.asarray(cols.atoms["positions"], dtype=np.float64).reshape(-1, 3),
        cell=np.asarray(cols.configs["cell"], dtype=np.float64).reshape(-1, 3, 3),
        pbc=np.asarray(cols.configs["pbc"], dtype=bool).reshape(-1, 3),
        weight=np.asarray(cols.configs.get("weight", np.ones(n)), dtype=np.float64),
        config_type=np.asarray(ct if ct is not None else ["Default"] * n, dtype=str),
        head=np.full(n, head, dtype=object).astype(str),
    )
    for nm in exported_fields(cols):
        f = fields.FIELDS[nm]
        out = renames.get(nm, mace_name(nm))
        values = np.asarray(cols.level(f.level)[nm])
        if nm == "molecule":
            values = values.astype(np.int64)
        blk.properties[out] = (values, _level_ptr(cols, f.level))
        blk.present[out] = present(cols, nm) if out in MACE_NONE_OK else np.ones(n, dtype=bool)
        blk.property_weights[out] = property_weight(cols, nm)
    # what MACE knows and the block lacks: "None" values, weight 0 (never MACE's default weight 1.0)
    for out in sorted(MACE_NONE_OK - set(blk.properties)):
        blk.properties[out] = (np.zeros(n), None)
        blk.present[out] = np.zeros(n, dtype=bool)
        blk.property_weights[out] = np.zeros(n)
    return blk


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def energy_statistics(energy: np.ndarray, numbers: np.ndarray, atom_ptr: np.ndarray,
                      mask: np.ndarray, e0: dict | None = None) -> dict:
    """E0s by least squares over the configs with an energy (``e0``: supplied values that take
    precedence), and mean/std of the per-atom remainder: :func:`scfdata.statistics.finalize`'s fit, with
    its diagnostics under ``e0`` (rank, condition number, the elements the data leave undetermined).

    An element that occurs only in configs without an energy gets E0 = 0.0 (MACE needs a number for every
    element) and is listed in ``elements_without_energy``. The same quantities as MACE's ``--E0s=average``
    and its scale/shift statistics; plain numbers. An under-determined fit issues
    :class:`~scfdata.statistics.UnderdeterminedWarning`.
    """
    from .statistics import finalize, merge, shard_sums

    m = np.asarray(mask, dtype=bool)
    zs = np.unique(np.asarray(numbers, dtype=np.int64))
    out = {"atomic_numbers": [int(z) for z in zs], "n_configs_with_energy": int(m.sum())}
    if m.sum() == 0:
        out.update(atomic_energies={}, mean=None, std=None)
        return out
    stats = finalize(merge([shard_sums(numbers, atom_ptr, energy=(np.asarray(energy, dtype=np.float64), m))]),
                     e0=e0)
    e0s = stats["atomic_energies"]
    out.update(
        # MACE needs an E0 for every element; these get 0.0 and are listed so that a user can set them
        elements_without_energy=[int(z) for z in zs if e0s[chemical_symbols[z]] is None],
        atomic_energies={str(int(z)): float(e0s[chemical_symbols[z]] or 0.0) for z in zs},
        mean=stats["energy_per_atom"]["mean"],
        std=stats["energy_per_atom"]["std"] if m.sum() > 1 else 1.0,
        e0=stats["e0"],
    )
    return out


def avg_num_neighbors(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, atom_ptr: np.ndarray,
                      r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` per atom (MACE's ``avg_num_neighbors``)."""
    from ase.neighborlist import primitive_neighbor_list

    total, n_atoms = 0, int(atom_ptr[-1])
    for i in range(len(atom_ptr) - 1):
        a0, a1 = int(atom_ptr[i]), int(atom_ptr[i + 1])
        c = cell[i] if pbc[i].any() else np.eye(3) * (np.ptp(positions[a0:a1], axis=0).max() + 2 * r_max + 1)
        idx = primitive_neighbor_list("i", pbc[i], c, positions[a0:a1], r_max, self_interaction=False)
        total += len(idx)
    return total / n_atoms if n_atoms else 0.0


def mace_statistics_strings(stats: dict) -> dict:
    """The same statistics in the encoding MACE's ``--statistics_file`` parses (``ast.literal_eval``
    of ``atomic_energies`` and ``atomic_numbers`` strings)."""
    out = dict(stats)
    out["atomic_energies"] = str({int(k): v for k, v in stats["atomic_energies"].items()})
    out["atomic_numbers"] = str(list(stats["atomic_numbers"]))
    return out
