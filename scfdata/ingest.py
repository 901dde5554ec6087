"""Stream frames from any file ``ase.io.iread`` reads into columnar blocks of canonical fields.

Frames are read one at a time and flushed in blocks, so memory does not grow with the dataset.
Every frame ends up in a block or in the rejects list (file index, frame index, reason):
``frames read == configs written + configs rejected``; with an index, each range must also yield the
frames the index counted. extxyz files are split into frames here (blank lines between frames read
through, as ase does after the last one), so one bad frame is one reject, not the end of the file.

Values are looked up in ``atoms.info``/``atoms.arrays`` and in ``atoms.calc.results`` (ASE >= 3.23
moves energy, forces and stress there). Per-config weights: ``config_weight``,
``config_<field>_weight``, ``config_dipole_weight`` (3 numbers), and ``config_type``.
A target's mask is True where it is present and its weights are not zero, so an absent or
switched-off target is never a zero target and never dilutes a mean.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np

from . import fields
from .columns import Columns
from .keys import KeyMapping
from .reference.dipoles import dipole_mask_from_pbc
from .validate import (
    FrameError,
    ValidationOptions,
    as_atom_value,
    as_config_value,
    as_weight,
    check_geometry,
    check_total_charge,
)

log = logging.getLogger("scfdata.ingest")

#: Mapped names that are read but not stored as a field of their own.
_CONVERTED = {"atomic_dipoles"}


class IngestError(ValueError):
    """The input cannot be ingested (unreadable file, mapped key absent everywhere, on_error=raise)."""


def sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    check_input_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def is_extxyz(path: str | os.PathLike, fmt: str | None) -> bool:
    """Whether frames are split by :func:`scan_extxyz` (extxyz, or xyz read by ase's extxyz reader)."""
    return (fmt or "").lower() in ("extxyz", "xyz") or (
        fmt is None and Path(path).suffix.lower() in (".xyz", ".extxyz"))


@dataclass
class FrameText:
    """One extxyz frame as found by :func:`scan_extxyz`: its index, first line (1-based), atom count,
    comment line, and (when asked for) its text."""

    index: int
    line: int
    n_atoms: int
    comment: bytes
    text: bytes | None = None


#: Largest atom count a frame header may give (larger is a corrupt count line, not a frame).
MAX_FRAME_ATOMS = 100_000_000


def scan_extxyz(path: str | os.PathLike, keep=None) -> Iterator[FrameText]:
    """Frames of an extxyz file from their atom-count lines, without parsing them.

    Blank (whitespace-only) lines between frames are read through, as ase does after the last frame; a
    count line that is not a number, a truncated frame, or a blank line inside a frame is an IngestError
    naming the file and the line. ``keep(index)`` says which frames carry their text (default: none).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        lineno, n = 0, 0
        while True:
            head = fh.readline()
            if not head:
                return
            lineno += 1
            if not head.strip():
                continue
            try:
                natoms = int(head.split()[0])
            except ValueError:
                raise IngestError(
                    f"{path}: line {lineno}: expected the atom count of frame {n}, found {head[:60]!r}; "
                    "the file is not extended XYZ or is malformed there"
                ) from None
            if not 0 <= natoms <= MAX_FRAME_ATOMS:
                raise IngestError(f"{path}: line {lineno}: atom count {natoms} of frame {n} is not in "
                                  f"0..{MAX_FRAME_ATOMS}; the file is malformed there")
            start = lineno
            lines = [head] if keep is not None and keep(n) else None
            comment = b""
            for k in range(natoms + 1):
                line = fh.readline()
                lineno += 1
                if not line:
                    raise IngestError(
                        f"{path}: truncated in frame {n} (starting at line {start}): expected {natoms} atom "
                        "lines; regenerate or cut the file before that frame"
                    )
                if k == 0:
                    comment = line
                elif not line.strip():
                    raise IngestError(f"{path}: line {lineno}: blank line inside frame {n} (starting at line "
                                      f"{start}, {natoms} atoms); remove it or fix the frame's atom count")
                if lines is not None:
                    lines.append(line)
            yield FrameText(n, start, natoms, comment, b"".join(lines) if lines is not None else None)
            n += 1


def _parse_extxyz_frame(path: Path, frame: FrameText):
    """The Atoms of one frame's text; a frame ase cannot parse is a FrameError (the framing is intact)."""
    try:
        return ase.io.read(io.StringIO(frame.text.decode("utf-8")), format="extxyz")
    except Exception as e:  # ase raises many types on malformed text
        return FrameError(f"unparsable frame (line {frame.line}): {type(e).__name__}: {str(e)[:200]}; fix it "
                          "in the input file")


def iter_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None,
                fmt: str | None = None) -> Iterator[tuple[int, object]]:
    """(frame index, Atoms) for frames start..stop of a file; a parse failure names the frame.

    extxyz files are split into frames here (blank lines between frames read through); a frame that does
    not parse is yielded as a FrameError (a reject). Other formats are read by ``ase.io.iread``; a parse
    failure there stops the file with an IngestError.
    """
    path = Path(path)
    check_input_file(path)
    if is_extxyz(path, fmt):
        for frame in scan_extxyz(path, keep=lambda k: k >= start):
            if stop is not None and frame.index >= stop:
                return
            if frame.index >= start:
                yield frame.index, _parse_extxyz_frame(path, frame)
        return
    i = start
    try:
        for atoms in ase.io.iread(str(path), index=slice(start, stop), format=fmt):
            yield i, atoms
            i += 1
    except IngestError:
        raise
    except Exception as e:  # ase raises many types on malformed text
        raise IngestError(
            f"{path}: parsing stopped at frame {i} ({type(e).__name__}: {e}); the file is truncated or "
            "malformed there: fix or regenerate it"
        ) from None


def check_input_file(path: str | os.PathLike) -> None:
    """An input must be an existing regular file (not a directory, a device, a FIFO or a symlink loop)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IngestError(f"{path}: input file not found; check the dataset's `inputs:` list") from None
    except OSError as e:
        raise IngestError(f"{path}: cannot open the input ({e.strerror}); give a regular file") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise IngestError(f"{path}: input is {kind}; give the frame files themselves")


def _lookup(atoms, key: str, section: str):
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    order = (atoms.info, results, atoms.arrays) if section == "info" else (atoms.arrays, results, atoms.info)
    for d in order:
        if key in d:
            return d[key]
    return None


def keys_of(atoms) -> set[str]:
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    return set(atoms.info) | set(atoms.arrays) | set(results)


@dataclass
class _Frame:
    n_atoms: int
    values: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    config: dict
    notes: list[str] = field(default_factory=list)


def extract_frame(atoms, mapping: KeyMapping, opts: ValidationOptions) -> _Frame:
    """Canonical values of one frame, validated. Raises FrameError with the reason."""
    n = len(atoms)
    if n == 0:
        raise FrameError("frame has no atoms")
    positions = np.asarray(atoms.positions, dtype=np.float64)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    notes = check_geometry(positions, cell, pbc, opts)

    values: dict[str, np.ndarray] = {}
    for name, key, section in mapping.items():
        raw = _lookup(atoms, key, section)
        if raw is None:
            continue
        if name in _CONVERTED:
            values[name] = as_atom_value(name, key, raw, n, (3,))
            continue
        f = fields.FIELDS[name]
        if f.level == "atom":
            values[name] = as_atom_value(name, key, raw, n, f.shape)
        else:
            values[name] = as_config_value(name, key, raw, f.shape)

    if "atomic_dipoles" in values:
        dip = values.pop("atomic_dipoles")
        if "atomic_multipoles" not in values:
            if "charges" not in values:
                raise FrameError("atomic_dipoles is mapped but charges is not: map both to build atomic_multipoles")
            from .reference.multipoles import charges_dipoles_to_multipoles

            values["atomic_multipoles"] = charges_dipoles_to_multipoles(values["charges"], dip)

    if "total_charge" in values:
        for name in ("atomic_multipoles", "charges"):
            if name in values:
                q = values[name][:, 0] if name == "atomic_multipoles" else values[name]
                q_new = check_total_charge(q, float(values["total_charge"]), opts)
                if name == "atomic_multipoles":
                    values[name] = values[name].copy()
                    values[name][:, 0] = q_new
                else:
                    values[name] = q_new

    weights = {}
    for name in values:
        w = atoms.info.get(f"config_{name}_weight")
        if name == "dipole":
            weights[name] = (
                as_weight(name, "config_dipole_weight", w, (3,)) if w is not None
                else dipole_mask_from_pbc(pbc)[0]
            )
        elif w is not None:
            weights[name] = as_weight(name, f"config_{name}_weight", w, ())
    config = {
        "numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "positions": positions,
        "cell": cell,
        "pbc": pbc,
        "weight": float(as_weight("config", "config_weight", atoms.info.get("config_weight", 1.0), ())),
        "config_type": str(atoms.info.get("config_type", "Default")),
    }
    return _Frame(n, values, weights, config, notes)


@dataclass
class IngestResult:
    n_read: int = 0
    n_written: int = 0
    rejects: list[tuple[int, int, str]] = field(default_factory=list)
    coverage: dict[str, int] = field(default_factory=dict)
    keys_seen: set[str] = field(default_factory=set)
    notes: dict[str, int] = field(default_factory=dict)  # kind -> configs kept with that warning

    def reconcile(self) -> None:
        if self.n_read != self.n_written + len(self.rejects):
            raise AssertionError(f"counts do not reconcile: read {self.n_read}, written {self.n_written}, "
                                 f"rejected {len(self.rejects)}")


class _BlockBuilder:
    """Accumulates frames and turns them into a Columns block with masks and weights."""

    def __init__(self, names: list[str], columns_k: int | None = None, columns_from: str = ""):
        self.names = names
        self.frames: list[_Frame] = []
        self.sources: list[tuple[int, int]] = []
        # multipole column count: the dataset's (from the index) or fixed by the first frame that has them
        self.columns_k = columns_k
        self.columns_from = columns_from or "earlier configs of this dataset have"

    def add(self, frame: _Frame, source: tuple[int, int]) -> None:
        mp = frame.values.get("atomic_multipoles")
        if mp is not None:
            if self.columns_k is None:
                self.columns_k = mp.shape[1]
            elif mp.shape[1] != self.columns_k:
                raise FrameError(
                    f"atomic_multipoles: {mp.shape[1]} columns, {self.columns_from} {self.columns_k}; "
                    "give every config the same max l"
                )
        self.frames.append(frame)
        self.sources.append(source)

    def __len__(self):
        return len(self.frames)

    def build(self) -> Columns:
        frames = self.frames
        n_atoms = np.array([f.n_atoms for f in frames], dtype=np.int64)
        cfg = {
            "pbc": np.array([f.config["pbc"] for f in frames], dtype=bool).reshape(-1, 3),
            "cell": np.array([f.config["cell"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
            "weight": np.array([f.config["weight"] for f in frames], dtype=np.float64),
            "config_type": np.array([f.config["config_type"] for f in frames], dtype=str),
            "source": np.array(self.sources, dtype=np.int64).reshape(-1, 2),
        }
        atoms = {
            "numbers": np.concatenate([f.config["numbers"] for f in frames]),
            "positions": np.concatenate([f.config["positions"] for f in frames]).reshape(-1, 3),
        }
        masks = {}
        for name in self.names:
            fd = fields.FIELDS[name]
            shape = (self.columns_k or 1,) if fd.shape == (None,) else fd.shape
            present = np.array([name in f.values for f in frames], dtype=bool)
            weight = np.ones((len(frames),) + fd.mask_shape)
            for k, f in enumerate(frames):
                if name in f.weights:
                    weight[k] = f.weights[name]
            if fd.level == "atom":
                parts = [f.values[name] if name in f.values else np.zeros((f.n_atoms,) + shape) for f in frames]
                atoms[name] = np.concatenate(parts).reshape((-1,) + shape)
            else:
                cfg[name] = np.array([f.values[name] if name in f.values else np.zeros(shape) for f in frames],
                                     dtype=np.float64).reshape((-1,) + shape)
            cfg[fields.weight_name(name)] = weight
            present_b = present.reshape((-1,) + (1,) * len(fd.mask_shape))
            live = (weight != 0) & (cfg["weight"] != 0).reshape((-1,) + (1,) * len(fd.mask_shape))
            masks[name] = present_b & live
        self.frames, self.sources = [], []
        return Columns(n_atoms=n_atoms, configs=cfg, atoms=atoms, masks=masks)


def stored_names(mapping: KeyMapping) -> list[str]:
    """The fields a mapping produces, in registry order."""
    names = {n for n, _, _ in mapping.items()} - _CONVERTED
    if {"atomic_dipoles", "charges"} <= {n for n, _, _ in mapping.items()}:
        names.add("atomic_multipoles")
    return [n for n in fields.FIELDS if n in names]


def ingest(
    writer,
    inputs: list[tuple[int, str | os.PathLike, int, int | None]],
    mapping: KeyMapping,
    *,
    on_error: str = "reject",
    options: ValidationOptions | None = None,
    block_size: int = 4096,
    fmt: str | None = None,
    progress=None,
    multipole_width: tuple[int, str] | None = None,
) -> IngestResult:
    """Ingest frame ranges ``(file index, path, start, stop)`` into ``writer`` (a StreamWriter).

    ``on_error='reject'`` records bad frames with their reason and goes on; ``'raise'`` stops at the
    first one with an IngestError naming file, frame, key, expected and found. A range with a ``stop``
    (from the index) must yield exactly ``stop - start`` frames, else the file changed since it was
    indexed (an IngestError). ``multipole_width``: (columns, where they were fixed), the dataset's
    multipole width from the index, so that outcomes do not depend on the shard count. Warnings name the
    file and frame, once per config.
    """
    if on_error not in ("reject", "raise"):
        raise ValueError(f"on_error must be 'reject' or 'raise', got {on_error!r}")
    opts = options or ValidationOptions()
    names = stored_names(mapping)
    builder = _BlockBuilder(names, *(multipole_width or (None, "")))
    result = IngestResult(coverage={n: 0 for n in names})
    for file_index, path, start, stop in inputs:
        frames = iter_frames(path, start, stop, fmt)
        n_range = 0
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                item = next(frames, None)
                if item is None:
                    break
                frame_index, atoms = item
                n_range += 1
                result.n_read += 1
                try:
                    if isinstance(atoms, FrameError):
                        raise atoms
                    result.keys_seen |= keys_of(atoms)
                    frame = extract_frame(atoms, mapping, opts)
                    builder.add(frame, (file_index, frame_index))
                except FrameError as e:
                    if on_error == "raise":
                        raise IngestError(f"{path}: frame {frame_index}: {e}") from None
                    result.rejects.append((file_index, frame_index, str(e)))
                    continue
            _note(result, path, frame_index, frame.notes + [f"{w.category.__name__}: {w.message}" for w in caught])
            for n in frame.values:
                if n in result.coverage:
                    result.coverage[n] += 1
            if len(builder) >= block_size and ("atomic_multipoles" not in names or builder.columns_k):
                result.n_written += len(builder)
                writer.append(builder.build())
            if progress is not None:
                progress(result.n_read)
        if stop is not None and n_range != stop - start:
            raise IngestError(
                f"{path}: the index counted frames {start}..{stop - 1} ({stop - start}) but ingest read {n_range} "
                "there: the file changed since `scfdata index`; rerun the workflow (the index is rebuilt)"
            )
    if len(builder):
        result.n_written += len(builder)
        writer.append(builder.build())
    writer.add_rejects(result.rejects)
    result.reconcile()
    return result


def _note(result: IngestResult, path, frame_index: int, notes: list[str]) -> None:
    """Log a kept config's warnings once each, naming file and frame; count them by kind."""
    for note in dict.fromkeys(notes):
        log.warning("%s: frame %d: %s", path, frame_index, note)
        kind = note.split(":", 1)[0]
        result.notes[kind] = result.notes.get(kind, 0) + 1


def check_keys_found(coverage: dict[str, int], keys_seen: set[str], mapping: KeyMapping,
                     where: str) -> None:
    """A mapped key absent from every frame is a typo: an error with a did-you-mean."""
    missing = []
    for name, key, _ in mapping.items():
        target = "atomic_multipoles" if name == "atomic_dipoles" else name
        if key in keys_seen or coverage.get(target, 0) > 0:
            continue
        hint = difflib.get_close_matches(key, sorted(keys_seen), n=1, cutoff=0.5)
        missing.append(
            f"{name} -> {key!r} is in no frame" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if missing:
        raise IngestError(
            f"{where}: mapped keys absent from every frame: " + "; ".join(missing)
            + f". Keys present in the frames: {', '.join(sorted(keys_seen))}. Fix the key mapping."
        )
