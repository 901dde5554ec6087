"""The scfdata HDF5 format (format_version 1): the only module that imports h5py.

Layout (DESIGN.md)::

    /                attrs format="scfdata", format_version=1, creator, created, provenance (JSON)
    /configs/<f>     per-config arrays, atom_ptr (n+1), molecule_ptr (n+1), pbc, cell, weight, ...
    /atoms/<f>       per-atom arrays
    /molecules/<f>   per-molecule arrays
    /masks/<f>       per-config presence of target f (False = absent, never a zero target)
    /rejects/        source (n,2) and reason of every config that did not make it

Final files are contiguous and uncompressed (so a reader can memory-map them) and are written under a
temporary name, then renamed: a killed run never leaves a file that looks complete; the next writer of
the same file removes the temporaries of writers that are no longer running. Strings are stored as
fixed-length UTF-8 bytes so that they are contiguous too. Every array carries ``checksum``
("crc32:<hex>" of its stored bytes), which ``scfdata verify`` recomputes.

Split files of one assembled set carry the same root attributes ``split_id`` (and ``split_name``);
``manifest.json`` next to them names the set's id. A reader refuses a split file whose id is not its
manifest's (or, without a manifest, not its sibling split files'): files of two runs are never mixed.
A reader maps arrays from the file descriptor it opened, so a file renamed over the path later is never
read through an open reader.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import mmap
import os
import shutil
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import __version__, fields
from .columns import Columns, ptr_from_counts, ranges_index

FORMAT = "scfdata"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
LEVEL_GROUP = {"config": "configs", "atom": "atoms", "molecule": "molecules"}
_POINTERS = ("atom_ptr", "molecule_ptr")
SPLIT_FILE_NAMES = ("train", "valid", "test")
MANIFEST = "manifest.json"


class FormatError(ValueError):
    """A file that is not a readable scfdata file (wrong format, unknown version, truncated)."""


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _to_disk(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "UO":
        enc = np.char.encode(np.asarray(a, dtype=str), "utf-8")
        return enc.astype(f"S{max(1, enc.dtype.itemsize)}")
    return a


def _from_disk(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "S":
        return np.char.decode(a, "utf-8")
    return a


def _field_attrs(name: str, derived_by: dict | None) -> dict:
    f = fields.get(name)
    attrs = {"unit": f.unit, "level": f.level, "description": f.description}
    if derived_by and name in derived_by:
        attrs["derived_by"] = json.dumps(derived_by[name], sort_keys=True)
    return attrs


def _tmp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.<pid>.<kind>`` temporaries of ``path`` left by writers that are no longer running
    (a killed job); a running writer's (another pid that is alive) are kept. Returns what was removed."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return removed
    for q in path.parent.iterdir():
        if not q.name.startswith(prefix):
            continue
        pid = q.name[len(prefix):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and pid_running(int(pid)):
            continue
        try:
            q.unlink()
            removed.append(q)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
    return removed


def ensure_room(path: Path, need: int) -> None:
    """Refuse, before HDF5 writes anything, a file of about ``need`` bytes that the file size limit
    (``ulimit -f``) or the free disk space cannot hold: HDF5 may crash instead of failing cleanly when a
    write fails half way. Raises OSError (EFBIG or ENOSPC) naming the limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and need > soft:
            raise OSError(errno.EFBIG, f"File too large: about {need} bytes to write, the file size limit "
                          f"(ulimit -f) is {soft} bytes", str(path))
    except ImportError:  # not on POSIX
        pass
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise OSError(errno.ENOSPC, f"No space left on device: about {need} bytes to write, {free} free",
                      str(path))


def _estimate(nbytes: int, n_arrays: int) -> int:
    """File size of ``nbytes`` of array data in ``n_arrays`` arrays, HDF5's own overhead included (an
    upper estimate)."""
    return int(nbytes + 2048 * (n_arrays + 16))


def checksum_update(arr: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of ``arr``'s bytes as stored (C order), continued from ``crc``."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1), crc)


def checksum_text(crc: int) -> str:
    return f"crc32:{crc & 0xFFFFFFFF:08x}"


def _write_array(group, name: str, data: np.ndarray, attrs: dict | None = None):
    """A contiguous dataset with its ``checksum`` (and ``attrs``)."""
    ds = group.create_dataset(name, data=data)
    ds.attrs["checksum"] = checksum_text(checksum_update(np.asarray(data, dtype=ds.dtype)))
    if attrs:
        ds.attrs.update(attrs)
    return ds


def _root_attrs(h5: h5py.File, provenance: dict | None, extra: dict | None = None) -> None:
    h5.attrs["format"] = FORMAT
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["creator"] = f"scfdata {__version__}"
    h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    h5.attrs["provenance"] = json.dumps(provenance or {}, sort_keys=True, default=str)
    for k, v in (extra or {}).items():
        h5.attrs[k] = v


def _write_rejects(h5: h5py.File, rejects: Sequence[tuple[int, int, str]]) -> None:
    g = h5.create_group("rejects")
    src = np.array([(r[0], r[1]) for r in rejects], dtype=np.int64).reshape(-1, 2)
    _write_array(g, "source", src)
    _write_array(g, "reason", _to_disk(np.array([r[2] for r in rejects], dtype=str)))


def _read_rejects(h5: h5py.File) -> list[tuple[int, int, str]]:
    if "rejects" not in h5:
        return []
    src = h5["rejects/source"][()]
    reason = _from_disk(h5["rejects/reason"][()])
    return [(int(s[0]), int(s[1]), str(r)) for s, r in zip(src, reason, strict=True)]


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------


def write_columns(
    path: str | os.PathLike,
    cols: Columns,
    *,
    provenance: dict | None = None,
    rejects: Sequence[tuple[int, int, str]] = (),
    derived_by: dict | None = None,
) -> Path:
    """Write one in-memory block as a final (contiguous) scfdata file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_name(path)
    arrays = [*cols.configs.values(), *cols.atoms.values(), *cols.molecules.values(), *cols.masks.values()]
    ensure_room(tmp, _estimate(sum(np.asarray(a).nbytes for a in arrays) + 16 * (cols.n_configs + 1)
                               + sum(len(r[2]) * 4 + 16 for r in rejects), len(arrays) + 4))
    try:
        with h5py.File(tmp, "w") as h5:
            _root_attrs(h5, provenance)
            for group in LEVEL_GROUP.values():
                h5.create_group(group)
            h5.create_group("masks")
            _write_array(h5["configs"], "atom_ptr", cols.atom_ptr)
            _write_array(h5["configs"], "molecule_ptr", cols.molecule_ptr)
            for level, group in LEVEL_GROUP.items():
                for name, arr in cols.level(level).items():
                    _write_array(h5[group], name, _to_disk(np.asarray(arr)), _field_attrs(name, derived_by))
            for name, arr in cols.masks.items():
                _write_array(h5["masks"], name, np.asarray(arr, dtype=bool))
            _write_rejects(h5, rejects)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class StreamWriter:
    """Append blocks of configs without holding them all in memory; ``close()`` writes the final file.

    Blocks go to a scratch file as raw bytes (each field's part of each block as it is stored); closing
    writes every field, part by part, into a contiguous file under a temporary name and renames it. Every
    block must hold the same fields (with the same per-item shapes; a later block's values are cast to the
    first block's dtype; strings are widened to the longest of all blocks).
    """

    def __init__(self, path: str | os.PathLike, *, provenance: dict | None = None,
                 derived_by: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.provenance = provenance or {}
        self.derived_by = derived_by
        self.rejects: list[tuple[int, int, str]] = []
        remove_stale_temporaries(self.path)
        self._scratch = _tmp_name(self.path, "scratch")
        self._fh = open(self._scratch, "w+b")  # noqa: SIM115 (closed by close() or abort())
        self._size = 0
        # group/name -> (dtype, per-item shape) of the first block; the parts: (offset, dtype, n rows)
        self._kinds: dict[str, tuple[np.dtype, tuple]] = {}
        self._parts: dict[str, list[tuple[int, np.dtype, int]]] = {}
        self._counts: list[tuple[np.ndarray, np.ndarray]] = []
        self._layout: dict[str, tuple] | None = None
        self.n_configs = 0

    def _append(self, name: str, arr: np.ndarray) -> None:
        arr = _to_disk(np.asarray(arr))
        if name not in self._kinds or (len(arr) and not self._parts[name]):  # the first block with data
            self._kinds[name] = (arr.dtype, arr.shape[1:])                  # sets the dtype
            self._parts.setdefault(name, [])
        dtype, shape = self._kinds[name]
        if shape != arr.shape[1:]:
            raise ValueError(f"{name}: per-item shape {arr.shape[1:]} differs from earlier blocks' {shape}")
        if not len(arr):
            return
        if (arr.dtype.kind == "S") != (dtype.kind == "S"):
            raise ValueError(f"{name}: dtype {arr.dtype} differs from earlier blocks' {dtype} (text and numbers)")
        if arr.dtype.kind != "S" and arr.dtype != dtype:
            arr = arr.astype(dtype)
        arr = np.ascontiguousarray(arr)
        try:
            self._fh.write(arr.data)
        except OSError as e:  # a full disk or a file size limit: name the scratch file
            raise OSError(e.errno, e.strerror, str(self._scratch)) from None
        self._parts[name].append((self._size, arr.dtype, len(arr)))
        self._size += arr.nbytes

    def append(self, cols: Columns) -> None:
        layout = {
            "configs": tuple(sorted(cols.configs)),
            "atoms": tuple(sorted(cols.atoms)),
            "molecules": tuple(sorted(cols.molecules)),
            "masks": tuple(sorted(cols.masks)),
        }
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise ValueError(f"block fields {layout} differ from the first block's {self._layout}")
        block = sum(np.asarray(a).nbytes for d in (cols.configs, cols.atoms, cols.molecules, cols.masks)
                    for a in d.values())
        ensure_room(self._scratch, self._size + 2 * _estimate(block, 0))
        for group, d in (("configs", cols.configs), ("atoms", cols.atoms),
                         ("molecules", cols.molecules), ("masks", cols.masks)):
            for name, arr in d.items():
                self._append(f"{group}/{name}", arr)
        self._counts.append((cols.n_atoms, cols.n_molecules))
        self.n_configs += cols.n_configs

    def add_rejects(self, rows: Iterable[tuple[int, int, str]]) -> None:
        self.rejects.extend(rows)

    def _final_dtype(self, key: str) -> np.dtype:
        dtype = self._kinds[key][0]
        if dtype.kind == "S":  # fixed length in the final file: the longest string of all blocks
            return np.dtype(f"S{max((p[1].itemsize for p in self._parts[key]), default=dtype.itemsize)}")
        return dtype

    def _read_part(self, offset: int, dtype: np.dtype, rows: int, shape: tuple) -> np.ndarray:
        part = np.empty((rows, *shape), dtype=dtype)
        raw = part.reshape(-1).view(np.uint8)
        self._fh.seek(offset)
        got = self._fh.readinto(raw)
        if got != raw.size:
            raise FormatError(f"{self._scratch}: scratch file truncated ({got} of {raw.size} bytes at {offset})")
        return part

    def _write_field(self, group, key: str) -> None:
        """``key``'s parts, one at a time, into one contiguous dataset of ``group`` with its checksum."""
        dtype, shape = self._final_dtype(key), self._kinds[key][1]
        n = sum(p[2] for p in self._parts[key])
        ds = group.create_dataset(key.split("/", 1)[1], shape=(n, *shape), dtype=dtype)
        crc, row = 0, 0
        for offset, part_dtype, rows in self._parts[key]:
            part = self._read_part(offset, part_dtype, rows, shape).astype(dtype, copy=False)
            ds[row : row + rows] = part
            crc = checksum_update(part, crc)
            row += rows
        ds.attrs["checksum"] = checksum_text(crc)

    def close(self) -> Path:
        try:
            self._fh.flush()
            tmp = _tmp_name(self.path)
            keys = {g: sorted(k for k in self._kinds if k.split("/", 1)[0] == g)
                    for g in ("configs", "atoms", "molecules", "masks")}
            nbytes = sum(sum(p[2] for p in self._parts[k]) * self._final_dtype(k).itemsize
                         * int(np.prod(self._kinds[k][1], dtype=np.int64)) for k in self._kinds)
            ensure_room(tmp, _estimate(nbytes + 16 * (self.n_configs + 1)
                                       + sum(len(r[2]) * 4 + 16 for r in self.rejects), len(self._kinds) + 4))
            n_atoms = np.concatenate([c[0] for c in self._counts]) if self._counts else np.zeros(0, np.int64)
            n_mol = np.concatenate([c[1] for c in self._counts]) if self._counts else np.zeros(0, np.int64)
            with h5py.File(tmp, "w") as out:
                _root_attrs(out, self.provenance)
                for group in (*LEVEL_GROUP.values(), "masks"):
                    out.create_group(group)
                _write_array(out["configs"], "atom_ptr", ptr_from_counts(n_atoms))
                _write_array(out["configs"], "molecule_ptr", ptr_from_counts(n_mol))
                for group, names in keys.items():
                    for key in names:
                        self._write_field(out[group], key)
                        if group != "masks":
                            out[key].attrs.update(_field_attrs(key.split("/", 1)[1], self.derived_by))
                _write_rejects(out, self.rejects)
            os.replace(tmp, self.path)
        finally:
            self.abort()
            if "tmp" in locals() and tmp.exists():
                tmp.unlink()
        return self.path

    def abort(self) -> None:
        try:
            self._fh.close()
        except OSError:  # a failed write's buffered bytes: the scratch file goes anyway
            pass
        self._scratch.unlink(missing_ok=True)


class _Shard:
    """One shard of an assembly: its files, the configs that go out, and which file holds each array.

    Built from the files' metadata only (pointers, dtypes, shapes); the files are closed again, so an
    assembly of many shards holds one shard's files open at a time. ``select(rows)`` gives the same
    shard with other rows, without reading the metadata again.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], rows: np.ndarray | None, number: int = 0):
        self.paths = [Path(p) for p in paths]
        self.number = number  # the shard's index in the assembly (error messages)
        files = [ScfdataFile(p) for p in self.paths]
        try:
            base = files[0]
            mol = next((f for f in files if f.n_molecules > 0), base)
            for f in files[1:]:
                if not np.array_equal(f.atom_ptr, base.atom_ptr):
                    raise FormatError(f"{f.path}: its configs do not match {base.path} (atom_ptr differs)")
                if f.n_molecules > 0 and not np.array_equal(f.molecule_ptr, mol.molecule_ptr):
                    raise FormatError(f"{f.path}: molecule_ptr differs from {mol.path}")
            self.rows = np.arange(base.n_configs) if rows is None else np.asarray(rows, dtype=np.int64)
            self.atom_ptr, self.molecule_ptr = base.atom_ptr, mol.molecule_ptr
            self.source: dict[str, int] = {}  # group/name -> index of the file that holds it
            self.holders: dict[str, list[int]] = {}  # masks/<f> -> every file that holds that mask
            self.layout: dict[str, tuple[np.dtype, tuple]] = {}
            self.derived_by: dict[str, dict] = {}
            for i, f in enumerate(files):  # a later file (a derived fragment) wins over an earlier one
                for key in f.datasets():
                    self.source[key] = i
                    self.holders.setdefault(key, []).append(i)
                    self.layout[key] = (f._h5[key].dtype, f._h5[key].shape[1:])
                self.derived_by.update(f.derived_by())
        finally:
            for f in files:
                f.close()

    def select(self, rows: np.ndarray | None) -> _Shard:
        """This shard with the configs ``rows`` (None: all) going out."""
        other = copy.copy(self)
        other.rows = np.arange(len(self.atom_ptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)
        return other

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.atom_ptr)[self.rows]

    @property
    def n_molecules(self) -> np.ndarray:
        return np.diff(self.molecule_ptr)[self.rows]

    def index(self) -> dict[str, np.ndarray]:
        """Group -> the rows of that group's arrays that go out."""
        return {"configs": self.rows, "masks": self.rows, "atoms": ranges_index(self.atom_ptr, self.rows),
                "molecules": ranges_index(self.molecule_ptr, self.rows)}


def _all_masked(sh: _Shard, name: str) -> bool:
    """Whether target ``name`` is absent (mask all False) from every config shard ``sh`` contributes."""
    key = f"masks/{name}"
    if key not in sh.source or len(sh.rows) == 0:
        return key in sh.source
    with ScfdataFile(sh.paths[sh.source[key]]) as f:
        return not np.asarray(f.raw("masks", name))[sh.rows].any()


def _padded_shape(key: str, plan: Sequence[_Shard], shapes: list[tuple]) -> tuple:
    """The per-item shape of ``key`` in the output when shards store different ones.

    Allowed only when a widest shape contains every other one and each shard with a narrower shape
    has the target fully masked (ingest stores a placeholder width there, e.g. (1,) zeros for
    atomic_multipoles in a shard without any); those shards are zero-padded. Otherwise FormatError.
    """
    group, name = key.split("/")
    widest = tuple(max(d) for d in zip(*shapes, strict=True)) if len({len(s) for s in shapes}) == 1 else None
    if widest in shapes:
        bad = [sh.number for sh, shape in zip(plan, shapes, strict=True)
               if shape != widest and (group == "masks" or not _all_masked(sh, name))]
        if not bad:
            return widest
        why = (f"shard(s) {', '.join(map(str, bad))} hold data with the narrower shape, so they cannot be "
               "zero-padded")
    else:
        why = "no shard's shape contains all the others"
    per_shard = ", ".join(f"{s} in shard {sh.number}" for sh, s in zip(plan, shapes, strict=True))
    raise FormatError(
        f"{key}: per-item shape differs between shards ({per_shard}); {why}. Shards may differ only where "
        "the narrower ones hold no data (mask all False): re-ingest with the same columns in every config "
        "(e.g. the same max l for atomic_multipoles)"
    )


def _shard_block(files: list, sh: _Shard, key: str, idx: np.ndarray, layout: tuple) -> np.ndarray:
    """The rows ``idx`` of array ``key`` of one shard, as the output stores them. A mask held by several
    files of the shard (the base and a fragment that re-derives the target) is their AND: a target
    absent in any of them stays absent, never a placeholder value marked present."""
    group, name = key.split("/")
    if group == "masks":
        block = np.ones((len(idx), *layout[1]), dtype=bool)
        for i in sh.holders[key]:
            m = np.asarray(files[i].raw(group, name))[idx]
            if m.shape[1:] != layout[1]:  # a fully masked narrower shard
                m = np.zeros(block.shape, dtype=bool)
            block &= m
        return block
    f = files[sh.source[key]]
    src = f._h5[key][()] if layout[0].kind == "S" else f.raw(group, name)
    block = np.asarray(src)[idx]
    if block.shape[1:] != layout[1]:  # a fully masked narrower shard: zero-padded
        pad = [(0, 0)] + [(0, w - v) for v, w in zip(block.shape[1:], layout[1], strict=True)]
        block = np.pad(block, pad)
    return block


@dataclasses.dataclass
class AssemblyOutput:
    """One file of an assembly: the configs ``rows`` of shard ``shard`` for each ``(shard, rows)`` in
    ``parts`` (rows None: all; shards in increasing order), with its provenance and extra root attributes."""

    path: Path
    parts: list[tuple[int, np.ndarray | None]]
    provenance: dict | None = None
    root_attrs: dict | None = None


@dataclasses.dataclass
class _Layout:
    keys: list[str]
    arrays: dict[str, tuple[np.dtype, tuple]]  # group/name -> (dtype, per-item shape) in the output
    derived_by: dict[str, dict]
    sizes: dict[str, int]  # group -> rows in the output
    n_atoms: np.ndarray
    n_molecules: np.ndarray


def _output_layout(plan: Sequence[_Shard]) -> _Layout:
    """The datasets of one output file from its shards' metadata (FormatError when shards disagree)."""
    keys = sorted(plan[0].source) if plan else []
    arrays: dict[str, tuple[np.dtype, tuple]] = {}
    derived_by: dict[str, dict] = {}
    for sh in plan:
        if sorted(sh.source) != keys:
            raise FormatError(f"shard {sh.number} holds fields {sorted(sh.source)}, shard {plan[0].number} holds "
                              f"{keys}: every shard must be derived with the same targets")
        derived_by.update(sh.derived_by)
        for key, (dtype, shape) in sh.layout.items():
            if key not in arrays:
                arrays[key] = (dtype, shape)
            elif dtype.kind == "S" and dtype.itemsize > arrays[key][0].itemsize:
                arrays[key] = (dtype, arrays[key][1])  # fixed-length strings: the widest shard's width
    for key in keys:
        shapes = [sh.layout[key][1] for sh in plan]
        if len(set(shapes)) > 1:
            arrays[key] = (arrays[key][0], _padded_shape(key, plan, shapes))
    n_atoms = np.concatenate([sh.n_atoms for sh in plan]) if plan else np.zeros(0, np.int64)
    n_mol = np.concatenate([sh.n_molecules for sh in plan]) if plan else np.zeros(0, np.int64)
    sizes = {"configs": len(n_atoms), "atoms": int(n_atoms.sum()), "molecules": int(n_mol.sum()),
             "masks": len(n_atoms)}
    return _Layout(keys, arrays, derived_by, sizes, n_atoms, n_mol)


def _data_bytes(lay: _Layout, rejects: Sequence[tuple[int, int, str]]) -> int:
    data = sum(lay.sizes[key.split("/")[0]] * lay.arrays[key][0].itemsize
               * int(np.prod(lay.arrays[key][1], dtype=np.int64)) for key in lay.keys)
    return _estimate(data + 16 * (len(lay.n_atoms) + 1) + sum(len(r[2]) * 4 + 16 for r in rejects),
                     len(lay.keys) + 4)


def _create(out: h5py.File, lay: _Layout, provenance: dict | None, root_attrs: dict | None) -> None:
    """Root attributes, pointers and every dataset at its final size (filled later)."""
    _root_attrs(out, provenance, root_attrs)
    for group in lay.sizes:
        out.create_group(group)
    _write_array(out["configs"], "atom_ptr", ptr_from_counts(lay.n_atoms))
    _write_array(out["configs"], "molecule_ptr", ptr_from_counts(lay.n_molecules))
    for key in lay.keys:
        group, name = key.split("/")
        dtype, shape = lay.arrays[key]
        ds = out[group].create_dataset(name, shape=(lay.sizes[group], *shape), dtype=dtype)
        if group != "masks":
            ds.attrs.update(_field_attrs(name, lay.derived_by))


def assemble_many(
    outputs: Sequence[AssemblyOutput],
    shards: Sequence[Sequence[str | os.PathLike]],
    *,
    rejects: Sequence[tuple[int, int, str]] = (),
    in_place: bool = False,
) -> list[Path]:
    """Merge shard files into several contiguous files (e.g. the splits of a dataset) in one pass over
    the shards: each shard's files are opened once and their rows go to every output that takes some.

    Each shard is a list of files describing the same configs (the ingested base and the derived
    fragments); their fields are unioned, and a mask held by several of them is their AND. Each
    output's datasets are created at their final size, then filled shard by shard: memory holds one
    shard's arrays at a time, whatever the number of shards. A field whose per-item shape differs
    between an output's shards takes the widest one when every shard with a narrower shape has that
    target fully masked there (those shards are zero-padded, their masks stay False); any other shape
    difference is a FormatError. Every output gets ``rejects``. The files are written under temporary
    names and renamed, unless ``in_place`` (the callers' paths are already temporary ones); a failure
    removes what was written.
    """
    for out in outputs:  # the shard pass fills each output in shard order
        order = [k for k, _ in out.parts]
        if any(b <= a for a, b in zip(order, order[1:])) or any(not 0 <= k < len(shards) for k in order):
            raise ValueError(f"assemble: {out.path}: parts must name shards 0..{len(shards) - 1} in increasing "
                             f"order, each once; got {order}")
    taken = sorted({k for out in outputs for k, _ in out.parts})  # a shard no output takes is never opened
    meta = {k: _Shard(shards[k], None, k) for k in taken}
    plans = [[meta[k].select(r) for k, r in out.parts] for out in outputs]
    layouts = [_output_layout(plan) for plan in plans]
    paths = [Path(out.path) for out in outputs]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not in_place:
            remove_stale_temporaries(path)
    tmps = paths if in_place else [_tmp_name(p) for p in paths]
    need: dict[Path, tuple[Path, int]] = {}  # per folder: the outputs there together must fit
    for tmp, lay in zip(tmps, layouts, strict=True):
        first, total = need.get(tmp.parent, (tmp, 0))
        need[tmp.parent] = (first, total + _data_bytes(lay, rejects))
    for tmp, total in need.values():
        ensure_room(tmp, total)
    done = False
    h5s: list[h5py.File] = []
    try:
        for tmp, lay, out in zip(tmps, layouts, outputs, strict=True):
            h5s.append(h5py.File(tmp, "w"))
            _create(h5s[-1], lay, out.provenance, out.root_attrs)
        crc = [dict.fromkeys(lay.keys, 0) for lay in layouts]
        at = [dict.fromkeys(lay.sizes, 0) for lay in layouts]
        takers = {k: [(o, plans[o][j]) for o, out in enumerate(outputs) for j, (kk, _) in enumerate(out.parts)
                      if kk == k] for k in taken}
        for k in taken:
            files = [ScfdataFile(p) for p in meta[k].paths]
            try:
                for o, part in takers[k]:
                    idx = part.index()
                    for key in layouts[o].keys:
                        group = key.split("/")[0]
                        n = len(idx[group])
                        if n:
                            block = np.asarray(_shard_block(files, part, key, idx[group], layouts[o].arrays[key]),
                                               dtype=layouts[o].arrays[key][0])
                            h5s[o][key][at[o][group] : at[o][group] + n] = block
                            crc[o][key] = checksum_update(block, crc[o][key])
                    for group in at[o]:
                        at[o][group] += len(idx[group])
            finally:
                for f in files:
                    f.close()
        for h5, lay, c in zip(h5s, layouts, crc, strict=True):
            for key in lay.keys:
                h5[key].attrs["checksum"] = checksum_text(c[key])
            _write_rejects(h5, rejects)
        while h5s:
            h5s.pop().close()
        if not in_place:
            for tmp, path in zip(tmps, paths, strict=True):
                os.replace(tmp, path)
        done = True
    finally:
        for h5 in h5s:
            h5.close()
        if not done or not in_place:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
    return paths


def assemble(
    out_path: str | os.PathLike,
    shards: Sequence[Sequence[str | os.PathLike]],
    rows: Sequence[np.ndarray | None] | None = None,
    *,
    provenance: dict | None = None,
    rejects: Sequence[tuple[int, int, str]] = (),
    root_attrs: dict | None = None,
    in_place: bool = False,
) -> Path:
    """Merge shard files into one contiguous file, selecting ``rows[k]`` configs of shard ``k`` (None:
    all); `assemble_many` with one output."""
    rows = list(rows) if rows is not None else [None] * len(shards)
    if len(rows) != len(shards):
        raise ValueError(f"assemble: {len(shards)} shards but {len(rows)} row selections")
    out = AssemblyOutput(Path(out_path), list(enumerate(rows)), provenance, root_attrs)
    return assemble_many([out], shards, rejects=rejects, in_place=in_place)[0]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def _vfd(h5: h5py.File) -> int | None:
    """The OS file descriptor of an open file (sec2 driver, the default), else None."""
    if h5.driver != "sec2":
        return None
    try:
        return int(h5.id.get_vfd_handle())
    except (TypeError, ValueError, RuntimeError):
        return None


def _text_attr(v):
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v


def read_split_id(path: str | os.PathLike) -> str | None:
    """The ``split_id`` root attribute of an HDF5 file (None if it has none or cannot be read)."""
    try:
        with h5py.File(path, "r") as h5:
            return _text_attr(h5.attrs.get("split_id"))
    except OSError:
        return None


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The results directory's manifest.json as a dict; None when there is none; FormatError when it is
    not a JSON object."""
    man = Path(directory) / MANIFEST
    try:
        value = json.loads(man.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{man}: unreadable manifest ({e}); rerun the workflow to rewrite it") from None
    if not isinstance(value, dict):
        raise FormatError(f"{man}: not a manifest (a JSON {type(value).__name__}); rerun the workflow")
    return value


def publication_problem(path: str | os.PathLike, split_id: str) -> str | None:
    """Why the split file ``path`` (root attribute ``split_id``) is not part of its directory's published
    set, or None. With a manifest.json next to it the manifest must name the same id and list the file;
    without one, every sibling split file must carry the same id."""
    path = Path(path)
    what = ("the results directory holds files of two runs (a run stopped while publishing, or files "
            "were copied in)")
    fix = f"rerun the workflow (`snakemake --cores 8`), or check with `scfdata verify {path.parent}`"
    manifest = read_manifest(path.parent)
    if manifest is not None and "splits" in manifest:
        want = manifest.get("split_id")
        if want != split_id:
            return (f"{path}: split id {split_id} differs from {path.parent / MANIFEST}'s {want}: {what}; "
                    f"refusing to read it; {fix}")
        if path.stem not in manifest["splits"]:
            return (f"{path}: not listed in {path.parent / MANIFEST} (whose splits are "
                    f"{', '.join(manifest['splits']) or 'none'}): a stale file of an earlier run; {fix}")
        return None
    for name in SPLIT_FILE_NAMES:
        other = path.with_name(f"{name}.h5")
        if other.name != path.name and other.exists():
            oid = read_split_id(other)
            if oid != split_id:
                return (f"{path}: split id {split_id} differs from {other}'s {oid} and there is no "
                        f"{MANIFEST}: {what}; refusing to read it; {fix}")
    return None


class ScfdataFile:
    """Read an scfdata file. Arrays are memory-mapped when the dataset is contiguous.

    >>> with ScfdataFile("results/water/train.h5") as f:
    ...     cfg = f.read_config(0); batch = f.read_batch([3, 1, 4])
    """

    def __init__(self, path: str | os.PathLike, *, check_publication: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            h5s = sorted(q.name for q in self.path.glob("*.h5"))
            hint = (f"files in it: {', '.join(h5s[:6])}{' ...' if len(h5s) > 6 else ''}" if h5s
                    else "it holds no .h5 file")
            raise FormatError(f"{self.path}: is a directory, not an scfdata file; give the path of one "
                              f"file ({hint})")
        if not self.path.exists():
            raise FormatError(f"{self.path}: no such file; check the path (or build it first)")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise FormatError(
                f"{self.path}: not a readable HDF5 file ({e}); it may be truncated or still being "
                "written: rebuild it (e.g. `snakemake --cores 8 --rerun-incomplete`)"
            ) from None
        try:
            fmt = self._h5.attrs.get("format")
            version = self._h5.attrs.get("format_version")
            version = version.item() if hasattr(version, "item") else version
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                raise FormatError(
                    f"{self.path}: not an scfdata file (root attribute format={fmt!r}, expected {FORMAT!r})"
                )
            if version not in READABLE_VERSIONS:
                raise FormatError(
                    f"{self.path}: format_version={version!r}, this scfdata ({__version__}) reads "
                    f"format_version {', '.join(map(str, READABLE_VERSIONS))}: upgrade scfdata or rebuild the file"
                )
            self.atom_ptr = self._h5["configs/atom_ptr"][()]
            self.molecule_ptr = self._h5["configs/molecule_ptr"][()]
            self._fd = _vfd(self._h5)
            st = os.fstat(self._fd) if self._fd is not None else os.stat(self.path)
            #: (device, inode, size, mtime_ns) of the file this reader opened (not of whatever the path
            #: names later): H5Dataset compares it when a worker reopens the path.
            self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self.split_id = _text_attr(self._h5.attrs.get("split_id"))
            self.split_name = _text_attr(self._h5.attrs.get("split_name"))
            if check_publication and self.is_published_name:
                problem = publication_problem(self.path, self.split_id)
                if problem:
                    raise FormatError(problem)
        except FormatError:
            self._h5.close()
            raise
        except (KeyError, OSError) as e:
            self._h5.close()
            raise FormatError(f"{self.path}: damaged scfdata file ({e}); rebuild it") from None
        self._maps: dict[str, np.ndarray] = {}
        self._mm: mmap.mmap | None = None

    # -- context manager / pickling (a DataLoader worker reopens the file lazily) --
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._maps.clear()
        if getattr(self, "_mm", None) is not None:
            try:
                self._mm.close()
            except BufferError:  # arrays handed out still use the map: it goes when they do
                pass
            self._mm = None
        if getattr(self, "_h5", None) is not None and self._h5.id.valid:
            self._h5.close()

    @property
    def is_published_name(self) -> bool:
        """Whether the file is a split file of an assembled set at its published name (``<split>.h5``)."""
        return self.split_id is not None and self.path.name == f"{self.split_name}.h5"

    # -- sizes --
    @property
    def n_configs(self) -> int:
        return len(self.atom_ptr) - 1

    @property
    def n_atoms(self) -> int:
        return int(self.atom_ptr[-1])

    @property
    def n_molecules(self) -> int:
        return int(self.molecule_ptr[-1])

    # -- metadata --
    @property
    def provenance(self) -> dict:
        return json.loads(self._h5.attrs.get("provenance", "{}"))

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._h5.attrs.items()}

    def rejects(self) -> list[tuple[int, int, str]]:
        return _read_rejects(self._h5)

    def datasets(self) -> list[str]:
        """Every stored array as ``group/name`` (pointers excluded)."""
        out = []
        for group in (*LEVEL_GROUP.values(), "masks"):
            if group in self._h5:
                out += [f"{group}/{n}" for n in self._h5[group] if n not in _POINTERS]
        return out

    def field_names(self) -> list[str]:
        """Target fields stored in the file (registry fields with data), in registry order."""
        present = set()
        for group in LEVEL_GROUP.values():
            if group in self._h5:
                present |= set(self._h5[group])
        return [n for n in fields.FIELDS if n in present]

    def exists(self, group: str, name: str) -> bool:
        return f"{group}/{name}" in self._h5

    def has(self, name: str) -> bool:
        try:
            f = fields.get(name)
        except KeyError:
            return False
        return f"{LEVEL_GROUP[f.level]}/{name}" in self._h5

    def field_attrs(self, name: str) -> dict:
        f = fields.get(name)
        a = dict(self._h5[f"{LEVEL_GROUP[f.level]}/{name}"].attrs)
        if "derived_by" in a:
            a["derived_by"] = json.loads(a["derived_by"])
        return a

    def derived_by(self) -> dict[str, dict]:
        out = {}
        for key in self.datasets():
            group, name = key.split("/")
            if group != "masks" and "derived_by" in self._h5[key].attrs:
                out[name] = json.loads(self._h5[key].attrs["derived_by"])
        return out

    # -- arrays --
    def raw(self, group: str, name: str) -> np.ndarray:
        """The whole array ``/group/name`` (memory-mapped when possible; strings decoded)."""
        key = f"{group}/{name}"
        if key in self._maps:
            return self._maps[key]
        arr = self._mapped(key)
        if arr is None:
            arr = _from_disk(self._h5[key][()])
        self._maps[key] = arr
        return arr

    def _mapped(self, key: str) -> np.ndarray | None:
        """``/key`` as a read-only view of a memory map of the file descriptor this reader opened (None
        when the dataset is not contiguous, is empty or holds strings, or the driver has no descriptor).
        Mapping the open descriptor, not the path, binds every later read to this file: a file renamed
        over the path meanwhile is not read."""
        ds = self._h5[key]
        if self._fd is None or ds.dtype.kind in "SO" or ds.size == 0 or ds.chunks is not None \
                or ds.compression is not None:
            return None
        offset = ds.id.get_offset()
        if offset is None:
            return None
        if self._mm is None:
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        if offset + ds.size * ds.dtype.itemsize > len(self._mm):
            raise FormatError(f"{self.path}: {key} ends at byte {offset + ds.size * ds.dtype.itemsize}, the file "
                              f"has {len(self._mm)} bytes: the file is truncated; rebuild it")
        return np.frombuffer(self._mm, dtype=ds.dtype, count=ds.size, offset=offset).reshape(ds.shape)

    def stored_blocks(self, key: str, block_bytes: int = 1 << 24):
        """``/key`` as stored (strings undecoded), in blocks of rows of about ``block_bytes``: for
        checksums and scans over files larger than memory."""
        ds = self._h5[key]
        arr = self._mapped(key)
        row = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
        step = max(1, block_bytes // row)
        n = ds.shape[0] if ds.ndim else 1
        for s in range(0, n, step):
            yield arr[s : s + step] if arr is not None else (ds[s : s + step] if ds.ndim else ds[()])

    def array_attrs(self, key: str) -> dict:
        """Attributes of ``/key`` (any stored array), bytes decoded."""
        return {k: _text_attr(v) for k, v in self._h5[key].attrs.items()}

    def array_info(self, key: str) -> tuple[np.dtype, tuple]:
        """(dtype, shape) of ``/key`` as stored."""
        ds = self._h5[key]
        return ds.dtype, ds.shape

    def groups(self) -> dict[str, list[str]]:
        """Every group of the file and the arrays in it (pointers included)."""
        return {g: list(self._h5[g]) for g in self._h5 if isinstance(self._h5[g], h5py.Group)}

    def read(self, name: str) -> np.ndarray:
        f = fields.get(name)
        return self.raw(LEVEL_GROUP[f.level], name)

    def mask(self, name: str) -> np.ndarray:
        """Per-config presence of a target ((n,) bool, (n,3) for the dipole); all False if absent."""
        if f"masks/{name}" in self._h5:
            return self.raw("masks", name)
        shape = (self.n_configs,) + fields.FIELDS[name].mask_shape if name in fields.FIELDS else (self.n_configs,)
        return np.zeros(shape, dtype=bool)

    def coverage(self, name: str) -> int:
        """Number of configs where the target is present (for the dipole: any component)."""
        if not self.has(name):
            return 0
        m = np.asarray(self.mask(name))
        return int(m.reshape(len(m), -1).any(axis=1).sum()) if m.size else 0

    def n_configs_with_min_molecules(self, k: int) -> int:
        return int((np.diff(self.molecule_ptr) >= k).sum())

    def read_config(self, i: int) -> dict[str, np.ndarray]:
        """One config as a dict of arrays (its fields, masks as ``<f>_mask``, n_atoms, n_molecules)."""
        if not -self.n_configs <= i < self.n_configs:
            raise IndexError(f"config {i} out of range: {self.path} has {self.n_configs} configs")
        i = i % self.n_configs
        a0, a1 = self.atom_ptr[i], self.atom_ptr[i + 1]
        m0, m1 = self.molecule_ptr[i], self.molecule_ptr[i + 1]
        out = {"n_atoms": np.int64(a1 - a0), "n_molecules": np.int64(m1 - m0)}
        for key in self.datasets():
            group, name = key.split("/")
            arr = self.raw(group, name)
            if group == "atoms":
                out[name] = np.array(arr[a0:a1])
            elif group == "molecules":
                out[name] = np.array(arr[m0:m1])
            elif group == "masks":
                out[f"{name}_mask"] = np.array(arr[i])
            else:
                out[name] = np.array(arr[i])
        return out

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Many configs at once, with one gather per stored array (not one read per config).

        Returns the ``ref`` layout of scfdata.losses: ``ptr``, ``batch`` (atom -> position in the
        batch), ``molecule`` made global within the batch, ``molecule_ptr``, ``molecule_batch``,
        every field, ``<f>_mask`` and the weights.
        """
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_configs):
            raise IndexError(f"batch indices out of range 0..{self.n_configs - 1} for {self.path}")
        n_at = self.atom_ptr[rows + 1] - self.atom_ptr[rows]
        n_mol = self.molecule_ptr[rows + 1] - self.molecule_ptr[rows]
        a_idx = ranges_index(self.atom_ptr, rows)
        m_idx = ranges_index(self.molecule_ptr, rows)
        out: dict[str, np.ndarray] = {
            "ptr": ptr_from_counts(n_at),
            "batch": np.repeat(np.arange(len(rows), dtype=np.int64), n_at),
            "molecule_ptr": ptr_from_counts(n_mol),
            "molecule_batch": np.repeat(np.arange(len(rows), dtype=np.int64), n_mol),
        }
        for key in self.datasets():
            group, name = key.split("/")
            arr = self.raw(group, name)
            idx = {"configs": rows, "masks": rows, "atoms": a_idx, "molecules": m_idx}[group]
            out[f"{name}_mask" if group == "masks" else name] = np.asarray(arr)[idx]
        if "molecule" in out:
            mol_offset = np.repeat(out["molecule_ptr"][:-1], n_at)
            out["molecule"] = out["molecule"].astype(np.int64) + mol_offset
        return out


def read_columns(path: str | os.PathLike, rows: np.ndarray | None = None) -> tuple[Columns, dict]:
    """A whole file (or the configs ``rows``) back as an in-memory block, plus the root provenance."""
    with ScfdataFile(path) as f:
        r = np.arange(f.n_configs) if rows is None else np.asarray(rows, dtype=np.int64)
        a_idx = ranges_index(f.atom_ptr, r)
        m_idx = ranges_index(f.molecule_ptr, r)
        cols = Columns(n_atoms=np.diff(f.atom_ptr)[r], n_molecules=np.diff(f.molecule_ptr)[r])
        for key in f.datasets():
            group, name = key.split("/")
            arr = f.raw(group, name)
            idx = {"configs": r, "masks": r, "atoms": a_idx, "molecules": m_idx}[group]
            target = {"configs": cols.configs, "atoms": cols.atoms, "molecules": cols.molecules,
                      "masks": cols.masks}[group]
            target[name] = np.asarray(arr)[idx]
        return cols, f.provenance
