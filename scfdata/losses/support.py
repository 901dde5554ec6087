"""Which losses a dataset supports, and whether a training schedule asks only for those.

Both functions take the data as any of:

- a path to an scfdata HDF5 file (read through ``scfdata.h5io.ScfdataFile``, imported only then);
- an open ``ScfdataFile`` or any object with the same small API: ``n_configs``, ``field_names()``,
  ``coverage(name) -> int`` (configs where the field is present), ``n_configs_with_min_molecules(k)``;
- a :class:`DataSummary` (no file needed, same API), e.g. ``DataSummary(100, {"energy": 100, "forces": 90})``;
- an object with a ``path`` attribute pointing at such a file (e.g. ``scfdata.data.H5Dataset``).

``check_schedule`` (problems) and ``check_schedule_report`` (problems, and one note per loss saying
what it is computed from) also read the training config from a YAML path (MACE_SCF format: a
top-level ``train_schedule``, a list of stages ``{name, start, end, loss, lr}`` or a mapping key ->
stage, named by its ``name`` when it has one; only ``loss`` and ``name`` are read). MACE_SCF's
model-internal terms are supported by any data (they read model outputs only). These are the only
functions of ``scfdata.losses`` that touch files.

How many configs contribute is the target field's coverage, capped, for the molecular losses, by the
number of configs with at least two molecules (both are counts, so their minimum is an upper bound
when the two sets differ). Not supported: checking the model's outputs against the losses (only the data).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .options import check_convention
from .registry import LOSSES, parse_loss_dict


@dataclass
class DataSummary:
    """What the support check needs to know about a dataset, without a file.

    ``counts`` maps each field present to its number of configs with the target present (a field
    stored but masked everywhere has coverage 0). ``min_molecules`` maps k -> number of configs with
    at least k molecules; when it lacks k=2 the molecular losses are not limited by it.
    """

    n_configs: int
    counts: Mapping[str, int] = field(default_factory=dict)
    min_molecules: Mapping[int, int] = field(default_factory=dict)

    def field_names(self) -> list[str]:
        return list(self.counts)

    def coverage(self, name: str) -> int:
        return int(self.counts.get(name, 0))

    def n_configs_with_min_molecules(self, k: int) -> int:
        return int(self.min_molecules.get(k, self.n_configs))

    @classmethod
    def of(cls, data) -> DataSummary:
        """Summarise a file-like reader (``ScfdataFile`` API) into a DataSummary."""
        names = list(data.field_names())
        return cls(
            n_configs=int(data.n_configs),
            counts={n: int(data.coverage(n)) for n in names},
            min_molecules={2: int(data.n_configs_with_min_molecules(2))},
        )


def _summary(path_or_dataset) -> DataSummary:
    if isinstance(path_or_dataset, DataSummary):
        return path_or_dataset
    if isinstance(path_or_dataset, str | os.PathLike):
        from ..h5io import ScfdataFile  # the reader is the only h5py user

        with ScfdataFile(path_or_dataset) as f:
            return DataSummary.of(f)
    if all(hasattr(path_or_dataset, a) for a in ("n_configs", "field_names", "coverage")):
        return DataSummary.of(path_or_dataset)
    path = getattr(path_or_dataset, "path", None)
    if path is not None:
        return _summary(Path(path))
    raise TypeError(
        "expected a path to an scfdata file, a DataSummary, or a reader with n_configs, field_names(), "
        f"coverage() and n_configs_with_min_molecules(); got {type(path_or_dataset).__name__}"
    )


def supported_losses(path_or_dataset) -> dict[str, dict]:
    """Per loss in ``LOSSES``: ``{"supported": bool, "n_configs": int, "reason": str, "note": str}``.

    ``reason`` is empty when supported; otherwise it names the missing field (absent from the data,
    or masked in every config) or says that no config has two molecules. ``note`` says what a
    model-internal term reads instead of reference data (empty for the data losses).
    """
    data = _summary(path_or_dataset)
    present = set(data.field_names())
    out: dict[str, dict] = {}
    for name, spec in LOSSES.items():
        out[name] = _support(spec, data, present)
    return out


def _support(spec, data: DataSummary, present: set) -> dict:
    if spec.kind == "model":
        return {"supported": True, "n_configs": int(data.n_configs), "reason": "",
                "note": "model-internal: needs no reference data; computed from the model outputs "
                        + ", ".join(spec.outputs)}
    missing = [f for f in spec.fields if f not in present]
    if missing:
        also = f" (also {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""
        return _unsupported(f"field {missing[0]!r} absent from the data{also}")
    n = data.coverage(spec.target)
    if n == 0:
        return _unsupported(f"field {spec.target!r} masked (absent) in every config")
    if spec.min_molecules:
        n_multi = data.n_configs_with_min_molecules(spec.min_molecules)
        if n_multi == 0:
            return _unsupported(f"no config has {spec.min_molecules} or more molecules "
                                "(at most one molecule per config)")
        n = min(n, n_multi)
    return {"supported": True, "n_configs": int(n), "reason": "", "note": ""}


def _unsupported(reason: str) -> dict:
    return {"supported": False, "n_configs": 0, "reason": reason, "note": ""}


def _misspelt(expected: str, keys) -> str:
    """'; found 'train_schedul': did you mean 'train_schedule'?' when a key looks like a typo of it."""
    close = difflib.get_close_matches(expected, [str(k) for k in keys], n=1, cutoff=0.6)
    return f"; found {close[0]!r}: did you mean {expected!r}?" if close else ""


def _stages(train_config) -> tuple[list[tuple[str, Mapping]], list[str]]:
    if isinstance(train_config, str | os.PathLike):
        from ..keys import load_yaml  # a syntax error: ValueError naming the file, line and column

        train_config = load_yaml(train_config, what="training config")
    if not isinstance(train_config, Mapping):
        return [], [f"the training config must be a mapping with a train_schedule, got "
                    f"{type(train_config).__name__}"]
    schedule = train_config.get("train_schedule")
    if schedule is None:
        return [], ["the training config has no 'train_schedule' (MACE_SCF format: a list of stages "
                    "with name/start/end/loss/lr)" + _misspelt("train_schedule", train_config)]
    if isinstance(schedule, Mapping):
        stages = [(str(v.get("name", k)) if isinstance(v, Mapping) else str(k), v) for k, v in schedule.items()]
    elif isinstance(schedule, list):
        stages = [(str(s.get("name", f"#{i}")) if isinstance(s, Mapping) else f"#{i}", s)
                  for i, s in enumerate(schedule)]
    else:
        return [], [f"train_schedule must be a list or a mapping of stages, got {type(schedule).__name__}"]
    return stages, []


def check_schedule(train_config, path_or_dataset, convention: str = "scfdata") -> list[str]:
    """Every problem of every ``train_schedule`` stage against the data; an empty list means OK.

    Each message names the stage; an unsupported loss names the missing field. Losses with weight 0
    are not checked against the data (they are never computed). A training config path that is not
    valid YAML raises ValueError naming the file, line and column. ``convention`` is the default
    arithmetic of the terms (``scfdata`` or ``mace_scf``), checked like ``WeightedLoss`` checks it.
    """
    return check_schedule_report(train_config, path_or_dataset, convention)[0]


def check_schedule_report(train_config, path_or_dataset,
                          convention: str = "scfdata") -> tuple[list[str], list[str]]:
    """(problems, notes): ``check_schedule``'s problems, and one note per loss of every stage saying
    what it will compute from (configs and fields of the data, or model outputs only) and how."""
    check_convention(convention)
    stages, problems = _stages(train_config)
    if problems:
        return problems, []
    support = supported_losses(path_or_dataset)
    notes: list[str] = []
    for stage_name, stage in stages:
        where = f"stage {stage_name!r}"
        if not isinstance(stage, Mapping):
            problems.append(f"{where}: a stage must be a mapping with name/start/end/loss/lr, got {stage!r}")
            continue
        if "loss" not in stage:
            problems.append(f"{where}: no 'loss' entry{_misspelt('loss', stage)}")
            continue
        parsed, bad = parse_loss_dict(stage["loss"])
        problems += [f"{where}: {msg}" for msg in bad]
        for name, (weight, options) in parsed.items():
            s, spec = support[name], LOSSES[name]
            how = f"weight {weight:g}, {options.get('convention', convention)} arithmetic"
            if weight == 0:
                notes.append(f"{where}: {name}: weight 0, not computed")
            elif not s["supported"]:
                problems.append(f"{where}: loss {name!r} is not supported by the data: {s['reason']}")
            elif spec.kind == "model":
                notes.append(f"{where}: {name} ({how}): {s['note']}")
            else:
                notes.append(f"{where}: {name} ({how}): {s['n_configs']} configs with data "
                             f"{', '.join(spec.fields)}; model outputs {', '.join(spec.outputs)}")
    return problems, notes
