"""What `scfdata verify FILE.h5|DIR` checks: an scfdata file's structure and content, a results
directory's published set.

A file: pointers (int, n+1 long, from 0, monotone); every array's first axis matches its level; field
attributes (unit, level, description) and the level of the group it is in; masks boolean, of the right
shape, each with its field; no non-finite value where the mask is True (fields without a mask: none at
all); weights finite and >= 0; per-atom molecule ids inside their config's molecules; the /rejects
arrays; and every array's stored ``checksum`` (crc32 of its bytes, written by the writer) recomputed.
Arrays are read in blocks, so memory stays bounded whatever the file size.

A directory: manifest.json present and naming a ``split_id``; every split it lists present, of the
recorded size and config count, carrying the same id, and verified as a file; split files it does not
list (a stale set's) are problems; temporaries of killed jobs are warnings (the next run removes them).
The counts reconcile: configs in = written + rejected (quality.drop's rejects included), written = the
splits' configs, every split file's /rejects and rejects.tsv hold the rejected rows; with quality flags,
the manifest's per-flag counts are the sums over its splits and each split file's provenance agrees.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import fields
from .h5io import (
    LEVEL_GROUP,
    MANIFEST,
    SPLIT_FILE_NAMES,
    FormatError,
    ScfdataFile,
    checksum_text,
    checksum_update,
    pid_running,
    publication_problem,
    read_manifest,
)

_GROUP_LEVEL = {g: lvl for lvl, g in LEVEL_GROUP.items()}
_POINTERS = ("atom_ptr", "molecule_ptr")


@dataclass
class Report:
    """Problems (the data cannot be trusted: exit 1), warnings (worth knowing) and what was checked."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.problems += other.problems
        self.warnings += other.warnings
        self.checked += other.checked

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------------------------------------
# one file
# ------------------------------------------------------------------------------------------------


def _pointer_problems(f: ScfdataFile) -> list[str]:
    out = []
    n = f.n_configs
    for name in _POINTERS:
        p = np.asarray(f.atom_ptr if name == "atom_ptr" else f.molecule_ptr)
        where = f"{f.path}: /configs/{name}"
        if p.dtype.kind not in "iu" or p.ndim != 1:
            out.append(f"{where}: expected a 1-d integer array, found dtype {p.dtype} with shape {p.shape}")
        elif len(p) != n + 1:
            out.append(f"{where}: expected {n + 1} entries (n_configs + 1), found {len(p)}")
        elif len(p) and p[0] != 0:
            out.append(f"{where}: expected to start at 0, found {p[0]}")
        elif len(p) and (bad := np.flatnonzero(np.diff(p) < 0)).size:
            out.append(f"{where}: decreases at config {bad[0]} ({p[bad[0]]} -> {p[bad[0] + 1]}); pointers must "
                       "be monotone")
    return out


def _presence(f: ScfdataFile, name: str, level: str) -> np.ndarray | None:
    """Per-entry presence of field ``name`` (first axis of its level, component axes kept), or None when
    the field has no mask."""
    if not f.exists("masks", name):
        return None
    m = np.asarray(f.raw("masks", name), dtype=bool)
    if level == "config":
        return m
    ptr = f.atom_ptr if level == "atom" else f.molecule_ptr
    return np.repeat(m, np.diff(ptr), axis=0)


def _config_of(f: ScfdataFile, level: str, row: int) -> int:
    if level == "config":
        return row
    ptr = f.atom_ptr if level == "atom" else f.molecule_ptr
    return int(np.searchsorted(ptr, row, side="right") - 1)


def _scan(f: ScfdataFile, key: str, level: str | None, checksums: bool) -> list[str]:
    """One pass over an array in blocks: its checksum, and non-finite / negative values where they
    must not be."""
    group, name = key.split("/")
    out = []
    dtype, shape = f.array_info(key)
    stored = f.array_attrs(key).get("checksum")
    floats = dtype.kind == "f" and group != "masks"
    present = _presence(f, name, level) if floats and level else None
    weight = group == "configs" and (name == "weight" or name.endswith("_weight"))
    crc, row0, bad_row, bad_what = 0, 0, None, ""
    for block in f.stored_blocks(key):
        block = np.asarray(block)
        if checksums and stored is not None:
            crc = checksum_update(block, crc)
        if floats and bad_row is None and block.size:
            v = block.reshape(len(block), -1)
            bad = ~np.isfinite(v)
            if weight:
                bad |= v < 0
            if present is not None:
                p = present[row0 : row0 + len(block)].reshape(len(block), -1)
                bad &= np.broadcast_to(p, bad.shape) if p.shape[1] in (1, bad.shape[1]) else p.any(1, keepdims=True)
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                bad_row = row0 + int(rows[0])
                bad_what = f"value {float(v[rows[0]][bad[rows[0]]][0])}"
        row0 += len(block)
    where = f"{f.path}: /{key}"
    if bad_row is not None:
        cfg = _config_of(f, level or "config", bad_row)
        entry = f" ({level} {bad_row})" if level in ("atom", "molecule") else ""
        rule = ("weights must be finite and >= 0" if weight else
                "where its mask is True" if present is not None else "it has no mask, so every value counts")
        out.append(f"{where}: {bad_what} at config {cfg}{entry}: {rule}; rebuild the file from its inputs")
    if checksums and stored is not None and stored != checksum_text(crc):
        out.append(f"{where}: checksum {checksum_text(crc)} differs from the stored {stored}: the file was changed "
                   "or damaged after it was written; rebuild it")
    return out


def _molecule_problems(f: ScfdataFile) -> list[str]:
    if not f.exists("atoms", "molecule"):
        return []
    mol = np.asarray(f.raw("atoms", "molecule"))
    n_at = np.diff(f.atom_ptr)
    n_mol = np.repeat(np.diff(f.molecule_ptr), n_at)
    present = _presence(f, "molecule", "atom")
    present = np.ones(len(mol), bool) if present is None else present
    bad = np.flatnonzero(present & ((mol < 0) | (mol >= n_mol)))
    if not bad.size:
        return []
    a = int(bad[0])
    cfg = _config_of(f, "atom", a)
    return [f"{f.path}: /atoms/molecule: id {mol[a]} at config {cfg} (atom {a}) is outside its config's "
            f"{n_mol[a]} molecules (mask True); rebuild the file"]


def _array_problems(f: ScfdataFile, group: str, name: str, size: int) -> list[str]:
    """Shape, dtype and attributes of one array (no data read)."""
    where = f"{f.path}: /{group}/{name}"
    dtype, shape = f.array_info(f"{group}/{name}")
    if not shape or shape[0] != size:
        return [f"{where}: first axis {shape[0] if shape else '(scalar)'}, expected {size} (the {group} count)"]
    if group == "masks":
        want = (size, *fields.FIELDS[name].mask_shape) if name in fields.FIELDS else None
        out = []
        if dtype.kind != "b":
            out.append(f"{where}: a mask must be boolean, found dtype {dtype}")
        if want is not None and shape != want:
            out.append(f"{where}: shape {shape}, expected {want}")
        if not any(f.exists(g, name) for g in LEVEL_GROUP.values()):
            out.append(f"{where}: a mask without its field (no /{{configs,atoms,molecules}}/{name})")
        return out
    try:
        fd = fields.get(name)
    except KeyError:
        return [f"{where}: not a field of format_version 1 (unknown name)"]
    attrs = f.array_attrs(f"{group}/{name}")
    missing = [a for a in ("unit", "level", "description") if a not in attrs]
    if missing:
        return [f"{where}: attribute(s) {', '.join(missing)} missing"]
    if attrs["level"] != fd.level or _GROUP_LEVEL[group] != fd.level:
        return [f"{where}: level {attrs['level']!r} in /{group}, the registry says {fd.level!r}"]
    return []


def verify_file(path: str | os.PathLike, *, checksums: bool = True) -> Report:
    """Check one scfdata file (see the module docstring)."""
    rep = Report()
    try:
        f = ScfdataFile(path, check_publication=False)
    except FormatError as e:
        rep.problems.append(str(e))
        return rep
    with f:
        if f.is_published_name and (why := publication_problem(f.path, f.split_id)):
            rep.problems.append(why)
        ptr_problems = _pointer_problems(f)
        rep.problems += ptr_problems
        if ptr_problems:
            return rep
        sizes = {"configs": f.n_configs, "atoms": f.n_atoms, "molecules": f.n_molecules, "masks": f.n_configs}
        groups = f.groups()
        n_arrays = n_sums = 0
        for group, size in sizes.items():
            for name in groups.get(group, []):
                key = f"{group}/{name}"
                if name in _POINTERS and group == "configs":
                    bad = []
                else:
                    bad = _array_problems(f, group, name, size)
                rep.problems += bad
                if bad:
                    continue
                n_arrays += 1
                n_sums += "checksum" in f.array_attrs(key)
                level = None if group == "masks" or name in _POINTERS else fields.get(name).level
                rep.problems += _scan(f, key, level, checksums)
        for name in groups.get("rejects", []):
            n_arrays += 1
            n_sums += "checksum" in f.array_attrs(f"rejects/{name}")
            rep.problems += _scan(f, f"rejects/{name}", None, checksums)
        rep.problems += _molecule_problems(f)
        if n_sums < n_arrays:
            rep.warnings.append(f"{f.path}: {n_arrays - n_sums} of {n_arrays} arrays carry no checksum (written by "
                                "an older scfdata): their content cannot be checked")
        rep.checked.append(f"{f.path}: {f.n_configs} configs, {f.n_atoms} atoms, {n_arrays} arrays"
                           + (f", {n_sums} checksums" if checksums else ""))
    return rep


# ------------------------------------------------------------------------------------------------
# a results directory
# ------------------------------------------------------------------------------------------------


def _temporaries(directory: Path) -> list[Path]:
    """``.<name>.<pid>.<kind>`` files of writers that are no longer running, in the directory and below."""
    out = []
    for q in sorted(directory.rglob(".*.*")):
        parts = q.name.split(".")
        pids = [p for p in parts if p.isdigit()]
        if q.is_file() and parts[-1] in ("tmp", "scratch", "npz") and pids and not pid_running(int(pids[0])):
            out.append(q)
    return out


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count_problems(d: Path, manifest: dict, sound: list[str]) -> list[str]:
    """The manifest's counts against each other, rejects.tsv and the sound split files ``sound`` (see the
    module docstring). Counts an older manifest lacks are not checked."""
    man, out = d / MANIFEST, []
    n_in, n_w, n_r = (manifest.get(k) for k in ("configs_in", "written", "rejected"))
    fix = "the set was changed after publication; rerun the workflow"
    if all(map(_is_count, (n_in, n_w, n_r))) and n_in != n_w + n_r:
        out.append(f"{man}: counts do not reconcile: configs_in {n_in} != written {n_w} + rejected {n_r}; {fix}")
    splits = manifest.get("splits") or {}
    in_splits = sum(e.get("n_configs", 0) for e in splits.values() if isinstance(e, dict))
    if _is_count(n_w) and splits and in_splits != n_w:
        out.append(f"{man}: counts do not reconcile: written {n_w}, its splits hold {in_splits}; {fix}")
    tsv = d / "rejects.tsv"
    if _is_count(n_r) and tsv.is_file():
        with open(tsv, "rb") as fh:
            rows = sum(1 for line in fh if line.strip()) - 1
        if rows != n_r:
            out.append(f"{tsv}: {rows} rows, {man} says rejected {n_r}: counts do not reconcile; {fix}")
    quality = manifest.get("quality")
    by_split = quality.get("by_split") or {} if isinstance(quality, dict) else {}
    if isinstance(quality, dict) and isinstance(quality.get("flags"), dict):
        total = Counter()
        for counts in by_split.values():
            total.update(counts)
        if any(total.get(k, 0) != v for k, v in quality["flags"].items()):
            out.append(f"{man}: quality flags {quality['flags']} are not the sums over by_split {by_split}; {fix}")
        n_dropped = sum((quality.get("dropped") or {}).values())
        n_quality = sum(v for k, v in (manifest.get("reject_reasons") or {}).items() if k.startswith("quality:"))
        if n_dropped != n_quality:
            out.append(f"{man}: quality dropped {n_dropped} configs, reject_reasons count {n_quality} quality rejects; "
                       f"{fix}")
    for name in sound:
        with ScfdataFile(d / f"{name}.h5", check_publication=False) as f:
            n_rows = f.array_info("rejects/source")[1][0] if "rejects" in f.groups() else 0
            prov = f.provenance.get("quality")
        if _is_count(n_r) and n_rows != n_r:
            out.append(f"{d / name}.h5: /rejects holds {n_rows} rows, {man} says rejected {n_r}; {fix}")
        if isinstance(quality, dict) and (prov or {}).get("flags") != by_split.get(name):
            out.append(f"{d / name}.h5: provenance quality flags {(prov or {}).get('flags')}, {man} quality.by_split."
                       f"{name} says {by_split.get(name)}; {fix}")
    return out


def verify_dir(directory: str | os.PathLike, *, checksums: bool = True) -> Report:
    """Check a results directory's published set (see the module docstring)."""
    d = Path(directory)
    rep = Report()
    try:
        manifest = read_manifest(d)
    except FormatError as e:
        rep.problems.append(str(e))
        manifest = None
    present = [n for n in SPLIT_FILE_NAMES if (d / f"{n}.h5").exists()]
    listed: dict = {}
    if manifest is None and not rep.problems:
        rep.problems.append(f"{d}: no {MANIFEST}: no set was published completely here (a run stopped, or this "
                            "is not a results directory); rerun the workflow")
    elif manifest is not None:
        listed = manifest.get("splits") or {}
        if not manifest.get("split_id"):
            rep.problems.append(f"{d / MANIFEST}: no split_id (written by an older scfdata): the split files "
                                "cannot be checked as one set; rerun the workflow")
    sound: list[str] = []
    for name in present:
        path = d / f"{name}.h5"
        if listed and name not in listed:
            rep.problems.append(f"{path}: not listed in {d / MANIFEST}: a stale file of an earlier run (readers "
                                "refuse it; the next run removes it)")
            continue
        sub = verify_file(path, checksums=checksums)
        rep.extend(sub)
        entry = listed.get(name) or {}
        if sub.ok:
            sound.append(name)
        if sub.ok and entry:
            with ScfdataFile(path, check_publication=False) as f:
                if "n_configs" in entry and f.n_configs != entry["n_configs"]:
                    rep.problems.append(f"{path}: {f.n_configs} configs, {MANIFEST} says {entry['n_configs']}")
            if "bytes" in entry and path.stat().st_size != entry["bytes"]:
                rep.problems.append(f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {entry['bytes']}: "
                                    "changed after publication; rerun the workflow")
    if manifest is not None:
        rep.problems += _count_problems(d, manifest, [n for n in sound if n in listed])
    for name in listed:
        if name not in present:
            rep.problems.append(f"{d / (name + '.h5')}: listed in {d / MANIFEST} but missing; rerun the workflow "
                                "(it rebuilds the set)")
    for q in _temporaries(d):
        rep.warnings.append(f"{q}: a temporary of a job that stopped (not part of any set; the next run of "
                            "that step removes it)")
    return rep


def verify(path: str | os.PathLike, *, checksums: bool = True) -> Report:
    """A file or a results directory."""
    p = Path(path)
    if not p.exists():
        return Report(problems=[f"{p}: no such file or directory"])
    return verify_dir(p, checksums=checksums) if p.is_dir() else verify_file(p, checksums=checksums)


def published_set_problem(directory: str | os.PathLike) -> str | None:
    """A cheap check (no array read) of a results directory's published set, for the workflow to decide
    whether to rebuild it: None when there is no manifest (nothing published) or when every split file
    the manifest lists is there with the recorded size and split id; otherwise the first problem."""
    d = Path(directory)
    try:
        manifest = read_manifest(d)
    except FormatError as e:
        return str(e)
    if manifest is None:
        return None
    for name, entry in (manifest.get("splits") or {}).items():
        path = d / f"{name}.h5"
        if not path.exists():
            return f"{path}: listed in {d / MANIFEST} but missing"
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {entry['bytes']}"
        try:
            with ScfdataFile(path) as f:
                if manifest.get("split_id") and f.split_id != manifest["split_id"]:
                    return f"{path}: split id {f.split_id}, {MANIFEST} says {manifest['split_id']}"
        except FormatError as e:
            return str(e)
    return None
