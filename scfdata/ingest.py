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

import gc
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import fields
from .columns import Columns, concat
from .extxyz_reader import MAX_FRAME_ATOMS, CParser, FramingError, iter_spans
from .ingest_errors import IngestError, check_keys_found  # noqa: F401 (re-exported: their old home)
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
    offset: int = 0
    end: int = 0


def scan_extxyz(path: str | os.PathLike, keep=None, offset: int = 0, line: int = 1,
                index: int = 0) -> Iterator[FrameText]:
    """Frames of an extxyz file from their atom-count lines, without parsing them.

    Blank (whitespace-only) lines between frames are read through, as ase does after the last frame; a
    count line that is not a number, a truncated frame, or a blank line inside a frame is an IngestError
    naming the file and the line. ``keep(index)`` says which frames carry their text (default: none).
    ``offset``, ``line``, ``index``: start at that byte offset, which is line ``line`` and frame ``index``.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        lineno, n = line - 1, index
        while True:
            start_offset = fh.tell()
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
            yield FrameText(n, start, natoms, comment, b"".join(lines) if lines is not None else None,
                            start_offset, fh.tell())
            n += 1


def _parse_extxyz_frame(path: Path, frame: FrameText):
    """The Atoms of one frame's text; a frame ase cannot parse is a FrameError (the framing is intact)."""
    import ase.io

    try:
        return ase.io.read(io.StringIO(frame.text.decode("utf-8")), format="extxyz")
    except Exception as e:  # ase raises many types on malformed text
        return FrameError(f"unparsable frame (line {frame.line}): {type(e).__name__}: {str(e)[:200]}; fix it "
                          "in the input file")


#: Parsers of extxyz: ``auto`` (the C parser, each frame it cannot vouch for through ASE), ``extxyz`` (the same),
#: ``ase`` (ASE's reader for every frame).
PARSERS = ("auto", "extxyz", "ase")


def iter_extxyz_spans(path, offset: int = 0, line: int = 1, index: int = 0):
    """(Span or FrameText, plain) for every frame from ``offset``: spans found by the chunked framing
    (``plain``); a frame it does not vouch for is read by :func:`scan_extxyz` (which raises the error of a
    malformed file, naming the line) with its text, and the chunked framing goes on after it."""
    while True:
        try:
            for span in iter_spans(path, offset, line, index):
                yield span, True
            return
        except FramingError as e:
            frame = next(scan_extxyz(path, keep=lambda k: True, offset=e.offset, line=e.line, index=e.index), None)
            if frame is None:
                return
            yield frame, False
            offset, line, index = frame.end, frame.line + frame.n_atoms + 2, frame.index + 1


def _read_text(path, span) -> FrameText:
    with open(path, "rb") as fh:
        fh.seek(span.offset)
        text = fh.read(span.end - span.offset)
    return FrameText(span.index, span.line, span.n_atoms, span.comment, text, span.offset, span.end)


def iter_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None, fmt: str | None = None,
                parser: str = "auto", seek: tuple[int, int, int] | None = None) -> Iterator[tuple[int, object]]:
    """(frame index, frame) for frames start..stop of a file; a parse failure names the frame.

    extxyz files are framed here (blank lines between frames read through). With ``parser`` auto/extxyz a
    frame is the C parser's tuple (:func:`scfdata.extxyz_reader.to_ase_conventions`) or, for frames it does
    not vouch for, ASE's Atoms; a frame ASE cannot parse is yielded as a FrameError (a reject). ``seek``:
    (frame, byte offset, line) of a frame at or before ``start`` (from the index). Other formats are read by
    ``ase.io.iread``; a parse failure there stops the file with an IngestError.
    """
    path = Path(path)
    check_input_file(path)
    if is_extxyz(path, fmt):
        index, offset, line = seek if seek is not None and seek[0] <= start else (0, 0, 1)
        c = CParser(path) if parser != "ase" else None
        last = MAX_FRAME_ATOMS * 1000 if stop is None else stop  # (more frames than any file has)
        try:
            for span, plain in iter_extxyz_spans(path, offset, line, index):
                i = span.index
                if i >= last:
                    return
                if i < start:
                    continue
                frame = c.read(span) if plain and c is not None else None
                if frame is None:
                    frame = _parse_extxyz_frame(path, span if not plain else _read_text(path, span))
                yield i, frame
        finally:
            if c is not None:
                c.close()
        return
    import ase.io

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
    renormalisation: float = 0.0  # total_charge - sum q before renormalise_charges shifted the charges


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

    renormalisation = 0.0
    if "total_charge" in values:
        for name in ("atomic_multipoles", "charges"):
            if name in values:
                q = values[name][:, 0] if name == "atomic_multipoles" else values[name]
                q_new = check_total_charge(q, float(values["total_charge"]), opts)
                if q_new is not q and not renormalisation:
                    renormalisation = float(values["total_charge"]) - float(q.sum())
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
    return _Frame(n, values, weights, config, notes, renormalisation)


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
    inputs: list[tuple],
    mapping: KeyMapping,
    *,
    on_error: str = "reject",
    options: ValidationOptions | None = None,
    block_size: int = 4096,
    fmt: str | None = None,
    progress=None,
    multipole_width: tuple[int, str] | None = None,
    parser: str = "auto",
) -> IngestResult:
    """Ingest frame ranges ``(file index, path, start, stop[, (frame, byte offset, line)])`` into ``writer``.

    ``on_error='reject'`` records bad frames with their reason and goes on; ``'raise'`` stops at the
    first one with an IngestError naming file, frame, key, expected and found. A range with a ``stop``
    (from the index) must yield exactly ``stop - start`` frames, else the file changed since it was
    indexed (an IngestError). ``multipole_width``: (columns, where they were fixed), the dataset's
    multipole width from the index, so that outcomes do not depend on the shard count. Warnings name the
    file and frame, once per config. ``parser``: see PARSERS; every path stores the same values.
    """
    if on_error not in ("reject", "raise"):
        raise ValueError(f"on_error must be 'reject' or 'raise', got {on_error!r}")
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    opts = options or ValidationOptions()
    names = stored_names(mapping)
    run = _Run(writer, names, mapping, opts, on_error, multipole_width)
    collecting = gc.isenabled()
    gc.disable()  # per-frame dicts and arrays hold no cycles: refcounting frees them (3% of the run otherwise)
    try:
        _ingest_ranges(run, inputs, fmt, parser, block_size, progress)
    finally:
        if collecting:
            gc.enable()
    run.flush(final=True)
    writer.add_rejects(run.result.rejects)
    run.result.reconcile()
    return run.result


def _ingest_ranges(run: _Run, inputs: list[tuple], fmt, parser: str, block_size: int, progress) -> None:
    for file_index, path, start, stop, *seek in inputs:
        frames = iter_frames(path, start, stop, fmt, parser, seek[0] if seek else None)
        n_range, failure = 0, None
        while failure is None:
            block = []
            try:
                for item in frames:
                    block.append(item)
                    if len(block) >= block_size:
                        break
            except IngestError as e:
                failure = e
            if not block and failure is None:
                break
            n_range += len(block)
            run.block(file_index, path, block)
            if progress is not None:
                progress(run.result.n_read)
        if failure is not None:
            raise failure
        if stop is not None and n_range != stop - start:
            raise IngestError(
                f"{path}: the index counted frames {start}..{stop - 1} ({stop - start}) but ingest read {n_range} "
                "there: the file changed since `scfdata index`; rerun the workflow (the index is rebuilt)"
            )


class _Run:
    """One ingest: turns blocks of (frame index, frame) into written columns, rejects and counts."""

    def __init__(self, writer, names, mapping, opts, on_error, multipole_width):
        from .ingest_fast import FastBlock

        self.writer, self.names, self.mapping, self.opts, self.on_error = writer, names, mapping, opts, on_error
        self.width, self.width_from = multipole_width or (None, "")
        self.width_from = self.width_from or "earlier configs of this dataset have"
        self.fast = FastBlock(mapping, names, opts)
        self.result = IngestResult(coverage={n: 0 for n in names})
        self.pending: list[Columns] = []  # blocks waiting for the multipole width
        # contract E: /configs/charge_renormalisation, once the field registry has it
        self.renormalised = ("total_charge" in names and opts.renormalise_charges
                             and "charge_renormalisation" in fields.FIELDS)

    def block(self, file_index: int, path, items: list) -> None:
        fast, slow = self.fast, {}
        fast.clear()
        kinds, fast_keys = [], []
        for frame_index, frame in items:
            if type(frame) is tuple and fast.usable:
                keys, weights = fast.keys_of(frame[5], frame[6])
                if fast.add(frame, weights):
                    fast_keys.append(keys)
                    kinds.append(("fast", len(fast) - 1))
                    continue
                frame = _parse_extxyz_frame(path, _read_text(path, frame[7]))
            kinds.append(("slow", frame_index))
            slow[frame_index] = frame
        ok, notes, renorm = fast.check() if len(fast) else (np.zeros(0, bool), [], None)
        if not slow and len(fast) and self._all_clear(ok, notes, fast.widths):  # the common block: every frame written
            for keys in {id(k): k for k in fast_keys}.values():
                self.result.keys_seen |= keys
            self.result.n_read += len(items)
            rows = np.arange(len(fast))
            self._emit(fast, rows, np.array([(file_index, i) for i, _ in items], dtype=np.int64), renorm, [])
            return
        for k, (kind, ref) in enumerate(kinds):
            if kind == "fast" and not ok[ref]:  # the per-frame path names the reason
                frame_index = items[k][0]
                kinds[k] = ("slow", frame_index)
                slow[frame_index] = (fast.view(ref, items[k][1])
                                     or _parse_extxyz_frame(path, _read_text(path, items[k][1][7])))
        builder = _BlockBuilder(self.names, self.width, self.width_from)
        fast_rows, fast_src, order, slow_shifts, slow_q = [], [], [], [], []
        widths = fast.widths if len(fast) else None
        for k, (kind, ref) in enumerate(kinds):
            frame_index = items[k][0]
            self.result.n_read += 1
            caught = []
            try:
                if kind == "fast":
                    self.result.keys_seen |= fast_keys[ref]
                    if widths[ref] >= 0:
                        self._check_width(int(widths[ref]))
                    if not notes[ref]:
                        fast_rows.append(ref)
                        fast_src.append((file_index, frame_index))
                        order.append(len(fast_rows) - 1)
                        continue
                    frame_notes = notes[ref]
                else:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        atoms = slow[ref]
                        if isinstance(atoms, FrameError):
                            raise atoms
                        self.result.keys_seen |= keys_of(atoms)
                        frame = extract_frame(atoms, self.mapping, self.opts)
                        mp = frame.values.get("atomic_multipoles")
                        self._check_width(None if mp is None else mp.shape[1])
                        frame_notes = frame.notes
            except FrameError as e:
                if self.on_error == "raise":
                    raise IngestError(f"{path}: frame {frame_index}: {e}") from None
                self.result.rejects.append((file_index, frame_index, str(e)))
                continue
            if frame_notes or caught:
                _note(self.result, path, frame_index,
                      frame_notes + [f"{w.category.__name__}: {w.message}" for w in caught])
            if kind == "fast":
                fast_rows.append(ref)
                fast_src.append((file_index, frame_index))
                order.append(len(fast_rows) - 1)
                continue
            for n in frame.values:
                if n in self.result.coverage:
                    self.result.coverage[n] += 1
            builder.add(frame, (file_index, frame_index))
            order.append(-len(builder))
            slow_shifts.append(frame.renormalisation)
            slow_q.append("total_charge" in frame.values
                          and ("atomic_multipoles" in frame.values or "charges" in frame.values))
        if not order:
            return
        self._emit(fast, np.array(fast_rows, dtype=np.int64), np.array(fast_src, dtype=np.int64).reshape(-1, 2),
                   renorm, order, builder, slow_shifts, slow_q)

    def _all_clear(self, ok: np.ndarray, notes: list, widths: np.ndarray) -> bool:
        """Whether every frame of a C-parsed block passed, without notes, with the dataset's multipole width
        (fixed here by the first frame that has multipoles when it is not known yet)."""
        if not ok.all() or any(notes):
            return False
        have = widths[widths >= 0]
        if not len(have):
            return True
        width = self.width if self.width is not None else int(have[0])
        if (have != width).any():
            return False
        self.width = width
        return True

    def _emit(self, fast, rows, sources, renorm, order, builder=None, slow_shifts=(), slow_q=()) -> None:
        """Columns of the written frames of a block (fast rows, then the builder's, put back in input order
        by ``order``: fast row positions >= 0, builder positions as -1 - k), counted and queued for writing."""
        parts, shifts, has_q = [], [], []
        if len(rows):
            for name, count in fast.coverage(rows).items():
                self.result.coverage[name] += count
            parts.append(fast.build(rows, self.width, sources))
            shifts.append(np.zeros(len(rows)) if renorm is None else renorm[rows])
            has_q.append(fast.has_charges(rows))
        if builder is not None and len(builder):
            builder.columns_k = self.width
            parts.append(builder.build())
            shifts.append(np.array(slow_shifts, dtype=np.float64))
            has_q.append(np.array(slow_q, dtype=bool))
        cols = parts[0] if len(parts) == 1 else concat(parts)
        if self.renormalised:
            cols.configs["charge_renormalisation"] = np.concatenate(shifts)
            cols.masks["charge_renormalisation"] = np.concatenate(has_q)
        if len(parts) == 2:  # back to input order
            n_fast = len(rows)
            cols = cols.select(np.array([i if i >= 0 else n_fast - i - 1 for i in order], dtype=np.int64))
        self.pending.append(cols)
        self.result.n_written += cols.n_configs
        self.flush()

    def _check_width(self, k: int | None) -> None:
        if k is None:
            return
        if self.width is None:
            self.width = k
        elif k != self.width:
            raise FrameError(f"atomic_multipoles: {k} columns, {self.width_from} {self.width}; "
                             "give every config the same max l")

    def flush(self, final: bool = False) -> None:
        """Write the pending blocks once the multipole width is known (zero-filled absent multipoles take it)."""
        if "atomic_multipoles" in self.names and self.width is None and not final:
            return
        for cols in self.pending:
            mp = cols.atoms.get("atomic_multipoles")
            if mp is not None and mp.shape[1] != (self.width or 1):
                cols.atoms["atomic_multipoles"] = np.zeros((len(mp), self.width or 1))
            self.writer.append(cols)
        self.pending = []


def _note(result: IngestResult, path, frame_index: int, notes: list[str]) -> None:
    """Log a kept config's warnings once each, naming file and frame; count them by kind."""
    for note in dict.fromkeys(notes):
        log.warning("%s: frame %d: %s", path, frame_index, note)
        kind = note.split(":", 1)[0]
        result.notes[kind] = result.notes.get(kind, 0) + 1
