"""Reading a ``ref`` batch and a ``pred`` mapping: aliases, masks, weights, shared per-batch sums.

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

    ==================  =============================================
    canonical           also read from (MACE_SCF)
    ==================  =============================================
    molecule            cluster_batch
    esps                electrostatic_potentials
    atomic_multipoles   density_coefficients
    ==================  =============================================

and the same for ``<name>_mask`` / ``<name>_weight``. Model outputs (``pred``): ``atomic_multipoles``
and ``density_coefficients`` are the same output; ``esps`` may be given as ``electrostatic_potentials``.

Atoms with a negative ``molecule`` index belong to no molecule (they are left out of Σ_{i∈M} F̂_i).
Not supported: per-atom masks inside a config (a config's mask applies to all its atoms and
molecules).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property

import torch

#: canonical ref name -> other names it may be stored under (MACE_SCF).
REF_ALIASES: dict[str, tuple[str, ...]] = {
    "molecule": ("cluster_batch",),
    "esps": ("electrostatic_potentials",),
    "atomic_multipoles": ("density_coefficients",),
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

    def _resolve(self, name: str) -> str | None:
        for n in _names_for(name, self._aliases):
            if _has(self._source, n):
                return n
        return None

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

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
    """``ref`` (dict, MACE/torch_geometric Batch) seen under scfdata's canonical names (no copies)."""
    return ref if isinstance(ref, AliasView) else AliasView(ref, REF_ALIASES)


def normalise_pred(pred) -> AliasView:
    return pred if isinstance(pred, AliasView) else AliasView(pred, PRED_ALIASES)


class BatchContext:
    """One (ref, pred) pair with the per-batch quantities that several losses share, computed once.

    Nothing here loops over configs or molecules: counts come from ``ptr``, sums are ``index_add``.
    """

    def __init__(self, ref, pred):
        self.ref = normalise_ref(ref)
        self.pred = normalise_pred(pred)
        for key in ("ptr", "batch"):
            if key not in self.ref:
                raise LossInputError(
                    f"the ref batch has no {key!r}: scfdata losses need ptr (B+1 atom offsets) and batch "
                    f"(config of each atom); found keys: {self.ref.available()}"
                )
        self.ptr = self.ref["ptr"]
        self.batch = self.ref["batch"]
        self.n_configs = int(self.ptr.shape[0]) - 1
        ref_tensor = next((v for k in self.pred if isinstance(v := self.pred[k], torch.Tensor)
                           and v.is_floating_point()), None)
        self.dtype = ref_tensor.dtype if ref_tensor is not None else torch.get_default_dtype()
        self.device = ref_tensor.device if ref_tensor is not None else self.ptr.device
        self._cache: dict = {}

    # -- access --------------------------------------------------------------------------------------
    def target(self, name: str) -> torch.Tensor:
        if name not in self.ref:
            alias = _names_for(name, REF_ALIASES)[1:]
            also = f" (or {', '.join(alias)})" if alias else ""
            raise LossInputError(
                f"the ref batch has no field {name!r}{also}; found keys: {self.ref.available()}. "
                "Check the dataset with `scfdata inspect` or drop this loss from the stage."
            )
        return self.ref[name].to(device=self.device, dtype=self.dtype)

    def output(self, name: str) -> torch.Tensor:
        if name not in self.pred:
            alias = _names_for(name, PRED_ALIASES)[1:]
            also = f" (or {', '.join(alias)})" if alias else ""
            raise LossInputError(
                f"the model outputs have no {name!r}{also}; found: {self.pred.available()}. "
                "This loss needs a model that predicts it."
            )
        return self.pred[name]

    def index(self, name: str) -> torch.Tensor:
        if name not in self.ref:
            raise LossInputError(f"the ref batch has no {name!r}; found keys: {self.ref.available()}")
        return self.ref[name].to(device=self.device, dtype=torch.long)

    # -- shared quantities ---------------------------------------------------------------------------
    @cached_property
    def n_atoms(self) -> torch.Tensor:
        """(B, 1) atom count per config, in the loss dtype."""
        ptr = self.ptr.to(self.device)
        return (ptr[1:] - ptr[:-1]).to(self.dtype).unsqueeze(1)

    @cached_property
    def inv_n_atoms_sq(self) -> torch.Tensor:
        """(B, 1) 1/N², the weight factor of the ``*_per_atom`` losses."""
        return self.n_atoms.square().reciprocal()

    @cached_property
    def config_weight(self) -> torch.Tensor:
        """(B, 1) config weight (1 where the batch has none)."""
        if "weight" in self.ref:
            return self.ref["weight"].to(device=self.device, dtype=self.dtype).reshape(self.n_configs, 1)
        return torch.ones(self.n_configs, 1, device=self.device, dtype=self.dtype)

    def weight(self, field: str) -> torch.Tensor:
        """(B, 1) or (B, 3) entry weight = config weight × property weight, 0 where the target is absent.

        A zero here removes the entry from both the sum and the count of the masked mean.
        """
        key = ("weight", field)
        if key in self._cache:
            return self._cache[key]
        B = self.n_configs
        w = self.config_weight
        pw = None
        if f"{field}_weight" in self.ref:
            pw = self.ref[f"{field}_weight"].to(device=self.device, dtype=self.dtype).reshape(B, -1)
            w = w * pw
        if f"{field}_mask" in self.ref:
            mask = self.ref[f"{field}_mask"].to(device=self.device).reshape(B, -1).bool()
        elif pw is not None:
            mask = pw != 0
        else:
            mask = None
        if mask is not None:
            w = torch.where(mask, w, 0.0)
        self._cache[key] = w
        return w

    def atom_weight(self, field: str) -> torch.Tensor:
        """(N, 1) the config's entry weight repeated on each of its atoms."""
        return self.weight(field)[:, :1].index_select(0, self.batch.to(self.device))

    @cached_property
    def molecule_batch(self) -> torch.Tensor:
        if "molecule_batch" in self.ref:
            return self.index("molecule_batch")
        if "molecule_ptr" not in self.ref:
            raise LossInputError(
                "the ref batch has neither molecule_batch nor molecule_ptr: the molecular losses need them; "
                f"found keys: {self.ref.available()}"
            )
        mptr = self.index("molecule_ptr")
        counts = mptr[1:] - mptr[:-1]
        n_mol = self.ref["molecular_forces"].shape[0] if "molecular_forces" in self.ref else None
        return torch.repeat_interleave(
            torch.arange(self.n_configs, device=self.device), counts, output_size=n_mol
        )

    @cached_property
    def n_molecules(self) -> int:
        for name in ("molecular_forces", "molecule_centre", "molecule_batch"):
            if name in self.ref:
                return int(self.ref[name].shape[0])
        return int(self.molecule_batch.shape[0])

    @cached_property
    def predicted_molecular_forces(self) -> torch.Tensor:
        """(M, 3) Σ_{i∈M} F̂_i, one index_add over atoms."""
        forces = self.output("forces")
        m = self.n_molecules
        mol = self.index("molecule")
        mol = torch.where(mol >= 0, mol, m)  # a negative index (no molecule) goes to a dropped row
        return forces.new_zeros(m + 1, 3).index_add(0, mol, forces)[:m]

    @cached_property
    def predicted_total_charge(self) -> torch.Tensor:
        """(B, 1) Σ_i q̂_i with q̂_i = density_coefficients[i, 0]."""
        q = self.output("density_coefficients")[:, 0]
        out = q.new_zeros(self.n_configs)
        return out.index_add(0, self.batch.to(q.device), q).unsqueeze(1)
