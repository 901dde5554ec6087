"""Reading a ``ref`` batch and a ``pred`` mapping: aliases, checks, masks, weights, shared sums.

The ``ref`` mapping (DESIGN.md, produced by ``scfdata.data`` / ``ScfdataFile.read_batch``)::

    ptr (B+1,) int64 atom offsets        batch (N,) config of each atom      weight (B,) config weight
    config fields (B, ...)               atom fields (N, ...)                molecule fields (M, ...)
    molecule (N,) GLOBAL molecule index  molecule_ptr (B+1,)                 molecule_batch (M,)
    <field>_mask   per-config presence, (B,) bool ((B,3) for dipole)
    <field>_weight property weight, (B,) float ((B,3) for dipole)

A MACE / torch_geometric ``Batch`` works too (anything with ``name in ref`` and ``ref[name]``, or
attributes). When ``<f>_mask`` is missing, the mask is ``<f>_weight != 0`` if that exists, else all
True; when ``<f>_weight`` is missing it is 1. MACE_SCF names are accepted through this alias table
(canonical name <- names also looked up, in order):

    ======================  =============================================
    canonical               also read from (MACE_SCF)
    ======================  =============================================
    esps                    electrostatic_potentials
    atomic_multipoles       density_coefficients
    cluster_virial_weight   cluster_loss_weight
    ======================  =============================================

and the same for ``<name>_mask`` / ``<name>_weight``. Model outputs (``pred``): ``atomic_multipoles``
and ``density_coefficients`` are the same output; ``esps`` may be given as ``electrostatic_potentials``.
``pred["loss_weight_modifier"]`` (B,), when present, multiplies every config weight (MACE_SCF uses it
to discount SCF runs that did not converge).

Molecules (``scfdata.losses.molecules``): ``molecule`` holds ids global within the batch;
MACE_SCF's ``cluster_batch`` holds ids local to each config (MACE's collation does not offset it) and
is combined with ``batch``. Atoms with a negative id belong to no molecule.

Every tensor a loss reads is checked here against the batch: a torch tensor (not numpy), predictions
in float32 or float64, and the shape the loss expects (``(N, 3)`` forces, never broadcast from
``(N, 1)`` or ``(3,)``). Not supported: per-atom masks inside a config (a config's mask applies to all
its atoms and molecules).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property

import torch

#: canonical ref name -> other names it may be stored under (MACE_SCF).
REF_ALIASES: dict[str, tuple[str, ...]] = {
    "esps": ("electrostatic_potentials",),
    "atomic_multipoles": ("density_coefficients",),
    "cluster_virial_weight": ("cluster_loss_weight",),
}

#: canonical model output -> other names it may be stored under.
PRED_ALIASES: dict[str, tuple[str, ...]] = {
    "atomic_multipoles": ("density_coefficients",),
    "density_coefficients": ("atomic_multipoles",),
    "esps": ("electrostatic_potentials",),
}


class LossInputError(ValueError):
    """A ``ref`` or ``pred`` mapping that lacks what a loss needs, or has the wrong shape."""


def _has(obj, key: str) -> bool:
    try:
        if key in obj:
            return obj[key] is not None
    except TypeError:
        pass
    return getattr(obj, key, None) is not None if not isinstance(obj, Mapping) else False


def _fetch(obj, key: str):
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError):
        return getattr(obj, key)


def _names_for(name: str, aliases: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    for suffix in ("_mask", "_weight"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in aliases:
                return (name, *(a + suffix for a in aliases[base]))
    return (name, *aliases.get(name, ()))


class AliasView(Mapping):
    """A read-only view of a mapping (or Batch object) under canonical names; no tensor is copied."""

    def __init__(self, source, aliases: dict[str, tuple[str, ...]]):
        self._source = source
        self._aliases = aliases
        self._memo: dict[str, str | None] = {}  # one view per loss call: the source does not change

    def _resolve(self, name: str) -> str | None:
        if name not in self._memo:
            self._memo[name] = next((n for n in _names_for(name, self._aliases) if _has(self._source, n)), None)
        return self._memo[name]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

    def stored_as(self, name: str) -> str | None:
        """The key ``name`` is read from (itself or an alias), None when absent."""
        return self._resolve(name)

    def __getitem__(self, name: str):
        key = self._resolve(name)
        if key is None:
            raise KeyError(name)
        return _fetch(self._source, key)

    def _source_keys(self) -> list[str]:
        keys = getattr(self._source, "keys", None)
        if keys is None:
            return []
        keys = keys() if callable(keys) else keys
        return [str(k) for k in keys]

    def __iter__(self) -> Iterator[str]:
        reverse = {a: c for c, al in self._aliases.items() for a in al}
        seen = set()
        for k in self._source_keys():
            c = reverse.get(k, k)
            if c not in seen:
                seen.add(c)
                yield c

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def available(self) -> str:
        return ", ".join(sorted(self)) or "(no keys visible)"


def normalise_ref(ref) -> AliasView:
    """``ref`` (dict, MACE/torch_geometric Batch) seen under scfdata's canonical names (no copies; a
    fresh view per call, so its name lookups are never stale)."""
    return AliasView(ref._source if isinstance(ref, AliasView) else ref, REF_ALIASES)


def normalise_pred(pred) -> AliasView:
    return AliasView(pred._source if isinstance(pred, AliasView) else pred, PRED_ALIASES)


#: floating dtypes a prediction may have (half precision loses the squared errors: refused)
_PRED_DTYPES = (torch.float32, torch.float64)

Shape = tuple  # of int (an exact size) or None (any size)


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("k" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _fits(t: torch.Tensor, shape: Shape) -> bool:
    return t.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape, strict=True))


def require_tensor(value, where: str) -> torch.Tensor:
    """``value`` if it is a torch tensor; otherwise a LossInputError that says how to convert it."""
    if isinstance(value, torch.Tensor):
        return value
    hint = (": convert it with torch.from_numpy(...) (predictions must be tensors to backpropagate)"
            if type(value).__module__.startswith("numpy") else "")
    raise LossInputError(f"{where} must be a torch.Tensor, got {type(value).__name__}{hint}")


def require_shape(t: torch.Tensor, shapes: tuple[Shape, ...], where: str, meaning: str) -> torch.Tensor:
    """``t`` if its shape is one of ``shapes`` (None = any size); else a LossInputError naming both."""
    if any(_fits(t, s) for s in shapes):
        return t
    raise LossInputError(f"{where}: expected shape {' or '.join(map(_fmt, shapes))} ({meaning}), "
                         f"got {tuple(t.shape)}")


class BatchContext:
    """One (ref, pred) pair with the per-batch quantities that several losses share, computed once.

    Nothing here loops over configs or molecules: counts come from ``ptr``, sums are ``index_add``.
    """

    def __init__(self, ref, pred):
        self.ref = normalise_ref(ref)
        self.pred = normalise_pred(pred)
        for key in ("ptr", "batch"):
            if key not in self.ref:
                why = (" (cluster_batch holds molecule ids local to each config: making them global needs "
                       "batch)" if key == "batch" and "cluster_batch" in self.ref else "")
                raise LossInputError(
                    f"the ref batch has no {key!r}: scfdata losses need ptr (B+1 atom offsets) and batch "
                    f"(config of each atom){why}; found keys: {self.ref.available()}"
                )
        self.ptr = self._index_tensor("ptr", require_tensor(self.ref["ptr"], "ref['ptr']"))
        self.n_configs = int(self.ptr.shape[0]) - 1
        if self.n_configs < 1:
            raise LossInputError(f"ref['ptr'] must hold B+1 >= 2 atom offsets, got shape {tuple(self.ptr.shape)}")
        self.n_atoms_total = int(self.ptr[-1])
        batch = self._index_tensor("batch", require_tensor(self.ref["batch"], "ref['batch']"))
        self.batch = require_shape(batch, ((self.n_atoms_total,),), "ref['batch']",
                                   f"one config index per atom, N = ptr[-1] = {self.n_atoms_total}")
        ref_tensor = next((v for k in self.pred if isinstance(v := self.pred[k], torch.Tensor)
                           and v.dtype in _PRED_DTYPES), None)
        self.dtype = ref_tensor.dtype if ref_tensor is not None else torch.get_default_dtype()
        self.device = ref_tensor.device if ref_tensor is not None else self.ptr.device
        self.ptr, self.batch = self.ptr.to(self.device), self.batch.to(self.device)
        self._cache: dict = {}

    @staticmethod
    def _index_tensor(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise LossInputError(f"ref[{name!r}] must be a 1-D integer tensor, got {t.dtype} of shape "
                                 f"{tuple(t.shape)}")
        return t.long()

    # -- sizes -----------------------------------------------------------------------------------------
    @property
    def atoms(self) -> tuple[int, str]:
        """(N, 'N=… atoms'): the atom count and its words for shape errors."""
        return self.n_atoms_total, f"N={self.n_atoms_total} atoms"

    # -- access --------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.ref

    def target(self, name: str, shapes: tuple[Shape, ...] | None = None, meaning: str = "") -> torch.Tensor:
        """The ref field ``name`` in the loss dtype, checked against ``shapes`` when given."""
        if name not in self.ref:
            alias = _names_for(name, REF_ALIASES)[1:]
            also = f" (or {', '.join(alias)})" if alias else ""
            raise LossInputError(
                f"the ref batch has no field {name!r}{also}; found keys: {self.ref.available()}. "
                "Check the dataset with `scfdata inspect` or drop this loss from the stage."
            )
        t = require_tensor(self.ref[name], f"ref[{name!r}]")
        if shapes is not None:
            require_shape(t, shapes, f"ref[{name!r}]", meaning)
        return t.to(device=self.device, dtype=self.dtype)

    def output(self, name: str, shapes: tuple[Shape, ...] | None = None, meaning: str = "") -> torch.Tensor:
        """The model output ``name`` (float32/float64 tensor), checked against ``shapes`` when given."""
        if name not in self.pred:
            alias = _names_for(name, PRED_ALIASES)[1:]
            also = f" (or {', '.join(alias)})" if alias else ""
            raise LossInputError(
                f"the model outputs have no {name!r}{also}; found: {self.pred.available()}. "
                "This loss needs a model that predicts it."
            )
        t = require_tensor(self.pred[name], f"pred[{name!r}]")
        if t.dtype not in _PRED_DTYPES:
            why = (" (half precision overflows and underflows in squared errors)"
                   if t.is_floating_point() else "")
            raise LossInputError(f"pred[{name!r}] has dtype {t.dtype}; the losses need float32 or float64{why}: "
                                 "cast the model outputs with .float() or .double()")
        if shapes is not None:
            require_shape(t, shapes, f"pred[{name!r}]", meaning)
        return t

    def index(self, name: str) -> torch.Tensor:
        if name not in self.ref:
            raise LossInputError(f"the ref batch has no {name!r}; found keys: {self.ref.available()}")
        t = require_tensor(self.ref[name], f"ref[{name!r}]")
        return self._index_tensor(name, t).to(self.device)

    def per_config(self, name: str, value: torch.Tensor, widths: tuple[int, ...] = (1,)) -> torch.Tensor:
        """``value`` (B·w values for a w in ``widths``) as a (B, w) tensor; else a LossInputError."""
        B = self.n_configs
        value = require_tensor(value, name)
        w = value.numel() // B if B else 0
        if value.ndim == 0 or value.numel() != B * w or w not in widths or value.shape[0] != B:
            want = " or ".join(f"({B},)" if k == 1 else f"({B}, {k})" for k in widths)
            raise LossInputError(f"{name}: expected shape {want} (one value per config), got {tuple(value.shape)}")
        return value.reshape(B, w)

    # -- shared quantities ---------------------------------------------------------------------------
    @cached_property
    def n_atoms(self) -> torch.Tensor:
        """(B, 1) atom count per config, in the loss dtype."""
        return (self.ptr[1:] - self.ptr[:-1]).to(self.dtype).unsqueeze(1)

    @cached_property
    def inv_n_atoms(self) -> torch.Tensor:
        """(B, 1) 1/N (MACE_SCF divides some squared errors by N once)."""
        return self.n_atoms.reciprocal()

    @cached_property
    def inv_n_atoms_sq(self) -> torch.Tensor:
        """(B, 1) 1/N², the weight factor of the ``*_per_atom`` losses."""
        return self.n_atoms.square().reciprocal()

    @cached_property
    def config_weight(self) -> torch.Tensor:
        """(B, 1) config weight (1 where the batch has none) × ``pred["loss_weight_modifier"]`` if given."""
        B = self.n_configs
        if "weight" in self.ref:
            w = self.per_config("ref['weight']", self.ref["weight"]).to(device=self.device, dtype=self.dtype)
        else:
            w = torch.ones(B, 1, device=self.device, dtype=self.dtype)
        if "loss_weight_modifier" in self.pred:
            m = self.per_config("pred['loss_weight_modifier']", self.pred["loss_weight_modifier"])
            w = w * m.to(device=self.device, dtype=self.dtype)
        return w

    def presence(self, field: str) -> torch.Tensor | None:
        """(B, k) bool: ``<field>_mask``, else ``<field>_weight != 0``, else None (present everywhere)."""
        key = ("presence", field)
        if key not in self._cache:
            self._cache[key] = None
            for suffix in ("_mask", "_weight"):
                if f"{field}{suffix}" in self.ref:
                    v = self.per_config(f"ref[{field + suffix!r}]", self.ref[f"{field}{suffix}"], (1, 3))
                    self._cache[key] = v.to(self.device).bool() if suffix == "_mask" else v.to(self.device) != 0
                    break
        return self._cache[key]

    def entry_weight(self, masks: tuple[str, ...], prop: str | None) -> torch.Tensor:
        """(B, 1) or (B, 3): config weight × ``<prop>_weight`` (1 if absent or ``prop`` is None), 0
        where any field of ``masks`` is absent. A zero removes the entry from a masked mean's count."""
        key = ("weight", masks, prop)
        if key in self._cache:
            return self._cache[key]
        w = self.config_weight
        if prop is not None and f"{prop}_weight" in self.ref:
            pw = self.per_config(f"ref[{prop + '_weight'!r}]", self.ref[f"{prop}_weight"], (1, 3))
            w = w * pw.to(device=self.device, dtype=self.dtype)
        for field in masks:
            mask = self.presence(field)
            if mask is not None:
                w = torch.where(mask, w, 0.0)
        self._cache[key] = w
        return w

    def weight(self, field: str) -> torch.Tensor:
        """The scfdata entry weight of ``field``: its own mask and property weight."""
        return self.entry_weight((field,), field)

    def to_atoms(self, w: torch.Tensor) -> torch.Tensor:
        """(N, 1) a per-config (B, 1) weight repeated on each atom of the config."""
        return w[:, :1].index_select(0, self.batch)

    def sum_over_configs(self, values: torch.Tensor) -> torch.Tensor:
        """(B, ...) Σ over the atoms of each config of (N, ...) ``values``."""
        return values.new_zeros(self.n_configs, *values.shape[1:]).index_add(0, self.batch, values)

    @cached_property
    def predicted_total_charge(self) -> torch.Tensor:
        """(B, 1) Σ_i q̂_i with q̂_i = density_coefficients[i, 0]."""
        N, words = self.atoms
        q = self.output("density_coefficients", ((N, None),), f"{words} × (L+1)^2")[:, :1]
        return self.sum_over_configs(q)
