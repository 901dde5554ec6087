"""Derived targets of one shard: read columns, call the pure physics in scfdata.reference, return a
fragment (the same configs, only the new fields, with masks and `derived_by` settings).

This module holds the esps, fields and dipoles targets and what every target module shares
(:class:`Derived`, the multipole source, the masks); scfdata/targets.py names each target's function.
Every function is vectorised over the shard's configs (one call into the physics, not a loop over
configs), and masks a config (never zeroes a target) where its inputs are absent or the target has no
meaning, with the reason counted in ``Derived.masked``; facts that mask nothing go to ``Derived.notes``,
and what deserves a warning about one config to ``Derived.warnings`` (config index -> text).
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import numpy as np

from .columns import Columns
from .reference.esp import pbc_labels
from .targets import TARGETS

_BOUNDARY_OF_PBC = {"FFF": "realspace", "TTT": "pbc", "TTF": "slab"}

ESPS_DEFAULTS = TARGETS["esps"].defaults()
DIPOLES_DEFAULTS = TARGETS["dipoles"].defaults()


class Derived:
    """A fragment plus its provenance: ``masked`` (reason -> configs masked for it), ``notes`` (facts that
    mask nothing, e.g. the dipole check) and ``warnings`` (config index in the shard -> one line)."""

    def __init__(self, cols: Columns, derived_by: dict, masked: dict | None = None, notes: dict | None = None,
                 warnings: dict[int, str] | None = None):
        self.cols, self.derived_by = cols, derived_by
        self.masked = {k: v for k, v in (masked or {}).items() if v}
        self.notes = {k: v for k, v in (notes or {}).items() if v}
        self.warnings = warnings or {}


def _atom_mask(cols: Columns, per_config: np.ndarray) -> np.ndarray:
    return np.repeat(per_config, cols.n_atoms)


def _multipole_source(cols: Columns, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(multipoles (N,K), per-config presence) from atomic_multipoles, or charges as l=0."""
    if settings.get("source", "multipoles") == "multipoles" and "atomic_multipoles" in cols.atoms:
        return cols.atoms["atomic_multipoles"], cols.masks["atomic_multipoles"]
    if "charges" in cols.atoms:
        return cols.atoms["charges"][:, None], cols.masks["charges"]
    if "atomic_multipoles" in cols.atoms:
        return cols.atoms["atomic_multipoles"][:, :1], cols.masks["atomic_multipoles"]
    raise ValueError(
        "the esps/fields/dipoles targets need atomic_multipoles or charges, and this dataset maps neither: "
        "add one to the dataset's `keys` (arrays_keys), or switch the target off"
    )


def esp_settings(settings: dict) -> dict:
    """The explicit (no preset) esps/fields settings with their defaults; ValueError for a preset-only key."""
    if "kspace_cutoff" in settings:
        raise ValueError(
            "reference.esps.kspace_cutoff is a setting of preset: mace_scf only (scfdata's own engines choose "
            "their cut-offs from `tolerance`): remove it, or add `preset: mace_scf`"
        )
    return {**ESPS_DEFAULTS, **{k: v for k, v in settings.items() if k not in ("enabled", "preset")}}


def _refuse_mapped_input(cols: Columns, name: str) -> None:
    """A derived field must not silently replace the same field mapped from the input files."""
    if name in cols.atoms and np.asarray(cols.masks.get(name, True)).any():
        raise ValueError(
            f"`{name}` is mapped from the input files (the dataset's keys) and is also a derived target: the "
            f"derived values would replace the DFT ones. Either remove `{name}` from the keys (derive it), or "
            f"set `reference.{name}: {{enabled: false}}` (train on the mapped values)"
        )


def _external_field(cols: Columns) -> np.ndarray:
    """(n_configs, 3) external field, 0 where absent or masked."""
    given = cols.masks.get("external_field", np.ones(cols.n_configs, bool)).reshape(cols.n_configs, -1).all(1)
    return np.where(given[:, None], np.asarray(cols.configs["external_field"], float).reshape(-1, 3), 0.0)


def charged_periodic(cols: Columns, mp: np.ndarray, live: np.ndarray) -> dict[int, str]:
    """Config index -> warning, for live TTT configs with a net charge (a neutralising background is added)."""
    q = np.add.reduceat(mp[:, 0], cols.atom_ptr[:-1]) if len(mp) else np.zeros(cols.n_configs)
    q = np.where(cols.n_atoms > 0, q, 0.0)
    hit = np.flatnonzero(live & (pbc_labels(cols.configs["pbc"]) == "TTT") & (np.abs(q) > 1e-8))
    return {int(c): f"net charge {q[c]:.6g} e in a periodic (TTT) cell: a uniform neutralising background is "
                    "added (zero cell-average potential)" for c in hit}


_CHARGED_CELL_WARNING = r"config \d+ \(pbc\) carries a net charge"


def _esp_and_field(cols: Columns, settings: dict, with_fields: bool):
    from .reference.esp import compute_esps

    s = esp_settings(settings)
    _refuse_mapped_input(cols, "fields" if with_fields else "esps")
    mp, present = _multipole_source(cols, s)
    # max_l is an upper bound: data with charges only give the l=0 potential (recorded in derived_by)
    if present.any():  # (a shard without any multipoles holds a placeholder column: keep the setting)
        s["max_l"] = min(int(s["max_l"]), int(round(np.sqrt(mp.shape[1]))) - 1)
    cls = pbc_labels(cols.configs["pbc"])
    ok_boundary = np.isin(cls, list(_BOUNDARY_OF_PBC)) if s["boundary"] == "auto" else np.ones(len(cls), bool)
    live = present & ok_boundary
    masked = Counter({"no atomic_multipoles or charges in the config": int((~present).sum())})
    for c in np.unique(cls[present & ~ok_boundary]):
        masked[f"pbc {c} has no ESP boundary (auto handles FFF, TTT, TTF)"] = int((cls[present] == c).sum())
    notes = {}
    if "external_field" in cols.configs:
        with_field = (_external_field(cols)[live] != 0).any(axis=1)
        notes["configs with an external field (not in this ESP: that of the multipoles only; "
              "preset mace_scf adds +E·r)"] = int(with_field.sum())
    n_atoms_total = int(cols.n_atoms.sum())
    esps = np.zeros(n_atoms_total)
    fields = np.zeros((n_atoms_total, 3))
    if live.any():
        sub = cols.select(np.flatnonzero(live))
        a_live = _atom_mask(cols, live)
        with warnings.catch_warnings():  # said once per config, with its file and frame: charged_periodic
            warnings.filterwarnings("ignore", message=_CHARGED_CELL_WARNING)
            v, e = compute_esps(sub.atoms["positions"], mp[a_live], sub.atom_ptr, sub.configs["cell"],
                                sub.configs["pbc"], with_fields=with_fields, **s)
        esps[a_live] = v
        if with_fields:
            fields[a_live] = e
    warn = charged_periodic(cols, mp, live) if s["boundary"] in ("auto", "pbc") else {}
    return EspResult(esps, fields, live, s, masked, notes, warn)


class EspResult:
    """What an ESP engine (scfdata's own, or preset mace_scf) gives the esps and fields targets."""

    def __init__(self, esps, fields, live, settings, masked, notes, warnings):
        self.esps, self.fields, self.live, self.settings = esps, fields, live, settings
        self.masked, self.notes, self.warnings = masked, notes, warnings

    def fragment(self, cols: Columns, target: str) -> Derived:
        values = self.fields if target == "fields" else self.esps
        frag = Columns(n_atoms=cols.n_atoms, atoms={target: values}, masks={target: self.live})
        return Derived(frag, {target: {"target": target, **self.settings}}, self.masked, self.notes, self.warnings)


def derive_esps(cols: Columns, settings: dict) -> Derived:
    return _esp_and_field(cols, settings, with_fields=False).fragment(cols, "esps")


def derive_fields(cols: Columns, settings: dict) -> Derived:
    return _esp_and_field(cols, settings, with_fields=True).fragment(cols, "fields")


def warm_up_esp_kernels(target: str, datasets: list[dict]) -> list[str]:
    """Compile (or load from numba's on-disk cache) the ESP kernels the shard jobs of ``target`` (esps or
    fields) will call, for each dataset's ``{"settings": ..., "mapped": [canonical names]}``: its smearing,
    its max_l (0 for charges-only data), potential or field, open and periodic/slab boundaries. Returns
    one line per combination compiled (numba compiles each combination separately: 2-16 s each).

    The open-boundary configs here have ``AUTO_NUMPY_MAX_ATOMS`` + 1 atoms, so ``engine="auto"`` runs them
    through the compiled loop (:func:`scfdata.reference.esp_realspace.cpu_direct_sum`), as it does the
    larger configs of the shard jobs (configs up to that size take the numpy engine, nothing to compile)."""
    from .reference.esp import compute_esps
    from .reference.esp_realspace import AUTO_NUMPY_MAX_ATOMS

    def cluster(n: int) -> np.ndarray:  # n atoms on a 1.5 Å grid
        side = int(np.ceil(n ** (1 / 3)))
        return 1.5 * np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]

    periodic, open_ = cluster(4) + [0.1, 0.2, 0.3], cluster(AUTO_NUMPY_MAX_ATOMS + 1)
    cell = np.repeat(np.eye(3)[None] * 6.0, 2, axis=0)
    cell[1, 2, 2] = 20.0
    combos = set()
    for d in datasets:
        if d["settings"].get("preset") is not None:  # graph-longrange (torch): nothing to compile here
            continue
        s = esp_settings(d["settings"])
        multipoles = s["source"] == "multipoles" and {"atomic_multipoles", "atomic_dipoles"} & set(d["mapped"])
        max_l = int(s["max_l"]) if multipoles else 0  # charges: the l = 0 potential (as derive_esps does)
        combos.add((float(s["smearing_width"]), max_l, s["self_interaction"], s["boundary"], float(s["tolerance"])))
    done = []
    for (sigma, max_l, self_interaction, boundary), pbc in itertools.product(
            sorted({c[:4] for c in combos}), ([[False] * 3, [False] * 3], [[True] * 3, [True, True, False]])):
        if boundary == "realspace" and pbc[0][0]:
            continue
        tol = min(c[4] for c in combos if c[:4] == (sigma, max_l, self_interaction, boundary))
        pos = periodic if pbc[0][0] else open_
        n = len(pos)
        mp = np.zeros((2 * n, 9))
        mp[:, 0] = np.resize([0.4, -0.4], 2 * n)
        mp[:, 1:4] = 0.05
        compute_esps(np.vstack([pos, pos + 0.5]), mp[:, : (max_l + 1) ** 2], np.array([0, n, 2 * n]), cell,
                     np.array(pbc), max_l=max_l, smearing_width=sigma, self_interaction=self_interaction,
                     boundary=boundary, tolerance=tol, with_fields=target == "fields")
        done.append(f"{target}: sigma {sigma}, max_l {max_l}, {self_interaction}, {boundary}, "
                    f"pbc {'TTT+TTF' if pbc[0][0] else 'FFF'}")
    return done


def derive_dipoles(cols: Columns, settings: dict) -> Derived:
    from ase.data import atomic_masses

    from .reference.dipoles import compute_dipoles, dipole_mask_from_pbc

    s = {**DIPOLES_DEFAULTS, **settings}
    mp, present = _multipole_source(cols, {"source": "multipoles"})
    masses = atomic_masses[cols.atoms["numbers"]]
    mu = compute_dipoles(cols.atoms["positions"], mp, cols.atom_ptr, masses=masses, origin=s["origin"])
    mask = present[:, None] & dipole_mask_from_pbc(cols.configs["pbc"]).astype(bool)
    notes = {}
    masked = {"no atomic_multipoles or charges in the config": int((~present).sum()),
              "pbc TTT (a dipole has no meaning in a 3D-periodic cell)": int((present & ~mask.any(axis=1)).sum())}
    charged = present & (np.abs(np.add.reduceat(mp[:, 0], cols.atom_ptr[:-1]) if len(mp) else 0) > 1e-6)
    if s["origin"] != "zero" or charged.any():
        notes["charged configs (their dipole depends on the origin)"] = int(charged.sum())
    if "dipole" in cols.configs:
        both = cols.masks["dipole"] & mask
        diff = np.where(both, mu - cols.configs["dipole"], 0.0)
        n = int(both.any(axis=1).sum())
        if n:
            norms = np.linalg.norm(diff, axis=1)[both.any(axis=1)]
            # mergeable over shards: counts and sums add, maxima take the max (see commands/assemble.py)
            notes["configs with DFT and multipole dipoles"] = n
            notes["sum |mu_DFT - mu_multipoles|^2 (e²Å²)"] = float((norms**2).sum())
            notes["max |mu_DFT - mu_multipoles| (e·Å)"] = float(norms.max())
    frag = Columns(n_atoms=cols.n_atoms, configs={"dipole_from_multipoles": mu},
                   masks={"dipole_from_multipoles": mask})
    return Derived(frag, {"dipole_from_multipoles": {"target": "dipoles", **s}}, masked, notes)
