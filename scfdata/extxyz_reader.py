"""extxyz at C speed: frames found from their atom-count lines over byte chunks (numpy), each frame parsed
by libextxyz's C parser (PyPI ``extxyz``) into plain dicts of arrays, then put into ASE's conventions.

What ASE's reader would store is the contract: every value the fast path returns is the one ``ase.io.read``
gives for the same frame text (names ``pos``/``Z``/``species``/``charge`` -> ``positions``/``numbers``/
``symbols``/``charges``, ``Lattice`` -> the cell's rows, ``pbc`` default TTT with a Lattice else FFF,
``stress``/``virial``/``Lattice`` read as 9 numbers in Fortran order, ``stress`` then to Voigt 6). A frame
the fast path cannot vouch for is handed back as ``None`` and goes through ASE: frames the C parser
refuses, nested ``[[...]]`` values, used integer values where the comment line has integer tokens of 10+
digits (the C parser keeps 32-bit integers), ``-0`` (an integer zero to the C parser, -0.0 among floats to ASE),
``Z`` or ``move_mask`` columns, integer or non-numeric columns and info values where numbers are used,
keys present both per config and per atom. The C parser is never given a frame whose count line is not a
plain positive number below MAX_FRAME_ATOMS (it crashes on 0 atoms).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Largest atom count a frame header may give (larger is a corrupt count line, not a frame).
MAX_FRAME_ATOMS = 100_000_000
#: Bytes read per chunk when framing (a frame larger than this doubles the chunk).
CHUNK = 1 << 22

_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\v\f")] = True
#: An integer token of 10 or more digits: beyond the C parser's 32-bit integers (it would wrap silently).
#: "-0" not followed by a digit or a point (a fast literal search before the exact token test below).
_MINUS_ZERO_ANY = re.compile(rb"-0+(?![\d.])")
#: An integer token -0: ASE reads it as -0.0 in a list of floats, the C parser as the integer 0.
#: Number spellings libextxyz reads and ASE refuses (Fortran `1.0d-1`, hex floats `0x1p-3`): frames holding
#: anything like them go through ASE, so both parsers store and reject the same (a false match only costs speed)
_DIGIT = np.zeros(256, bool)
_DIGIT[list(b"0123456789")] = True
_AFTER_D = _DIGIT.copy()
_AFTER_D[list(b"+-")] = True
_AFTER_X = _DIGIT.copy()
_AFTER_X[list(b".abcdefABCDEF")] = True


def _not_ase_numbers(raw: np.ndarray) -> list[int]:
    """Chunk offsets of number spellings libextxyz reads and ASE refuses: a digit or '.' then d/D then a
    digit or sign (Fortran `1.0d-1`), '0' then x/X then a hex digit or '.' (`0x1p-3`). Vectorised: one pass
    over the bytes for d/D/x/X, then the neighbours of those few."""
    low = raw | 0x20
    at = np.flatnonzero((low[1:-1] == ord("d")) | (low[1:-1] == ord("x"))) + 1
    if not len(at):
        return []
    prev, nxt, is_d = raw[at - 1], raw[at + 1], low[at] == ord("d")
    odd = np.where(is_d, (_DIGIT[prev] | (prev == ord("."))) & _AFTER_D[nxt], (prev == ord("0")) & _AFTER_X[nxt])
    return at[odd].tolist()
_MINUS_ZERO = re.compile(rb"""(?:^|[\s="',\[{])-0+(?=$|[\s"',\]}])""")
_BIG_INT = re.compile(rb"""(?:^|[\s="',\[{])[+-]?\d{10,}(?=$|[\s"',\]}])""")

#: ASE's extxyz column renames (ase.io.extxyz.REV_PROPERTY_NAME_MAP) and its 3x3 info keys.
COLUMN_NAMES = {"pos": "positions", "Z": "numbers", "charge": "charges", "species": "symbols"}
SPECIAL_3_3_KEYS = ("Lattice", "virial", "stress")


@dataclass(slots=True)
class Span:
    """One frame: index, first line (1-based), byte offset of its count line, end offset, atom count,
    comment line (bytes, without the line end)."""

    index: int
    line: int
    offset: int
    end: int
    n_atoms: int
    comment: bytes
    plain: bool = True  # no number spelling only libextxyz reads (_not_ase_numbers) in the frame


class FramingError(Exception):
    """The frame at ``span`` (offset, line, index) needs the line-by-line scanner (it raises the exact
    error: a count line that is not a number, a blank line inside a frame, a truncated frame)."""

    def __init__(self, offset: int, line: int, index: int):
        super().__init__(offset, line, index)
        self.offset, self.line, self.index = offset, line, index


def iter_spans(path: str | os.PathLike, offset: int = 0, line: int = 1, index: int = 0) -> Iterator[Span]:
    """Frames from byte ``offset`` (the start of frame ``index``, at line ``line``) to the end of the file.

    Raises FramingError at the first frame that is not plainly framed; the caller then reads that frame with
    the line-by-line scanner, which names the problem (or reads it and goes on from its end)."""
    chunk = CHUNK
    with open(path, "rb") as fh:
        pos = offset
        while True:
            fh.seek(pos)
            buf = fh.read(chunk)
            if not buf:
                return
            eof = len(buf) < chunk or not fh.read(1)
            raw = np.frombuffer(buf, dtype=np.uint8)
            odd = _not_ase_numbers(raw)  # sorted offsets; usually none
            ends = np.flatnonzero(raw == 10)
            if eof and buf[-1:] != b"\n":
                ends = np.append(ends, len(buf))
            starts = np.empty_like(ends)
            starts[:1] = 0
            starts[1:] = ends[:-1] + 1
            # whitespace-only lines: candidates start with whitespace (or are empty), each then checked
            first = np.where(starts < len(buf), raw[np.minimum(starts, len(buf) - 1)], 10)
            cand = np.flatnonzero(_WHITESPACE[first] | (starts == ends))
            blank = [k for k in cand.tolist() if not buf[starts[k]:ends[k]].strip()]
            blank.append(len(ends) + 1)
            starts_l, ends_l = starts.item, ends.item  # per frame a few lookups: no per-line Python objects
            n_lines, k, b = len(ends), 0, 0
            while k < n_lines:
                while blank[b] < k:
                    b += 1
                if blank[b] == k:  # a blank line between frames
                    k += 1
                    line += 1
                    continue
                head = buf[starts_l(k):ends_l(k)].strip()
                # (len: no int() of 4,300+ digits, which raises)
                if not head.isdigit() or len(head) > 18 or not 0 < int(head) <= MAX_FRAME_ATOMS:
                    raise FramingError(pos + starts_l(k), line, index)
                nat = int(head)
                last = k + nat + 1
                if last >= n_lines:  # the frame goes on past this chunk
                    if eof:
                        raise FramingError(pos + starts_l(k), line, index)
                    break
                inside = blank[b + 1] if blank[b] == k + 1 else blank[b]  # a blank comment line is allowed
                if inside <= last:
                    raise FramingError(pos + starts_l(k), line, index)
                a, e = starts_l(k), min(ends_l(last) + 1, len(buf))
                plain = not odd or bisect.bisect_left(odd, e) == bisect.bisect_left(odd, a)
                yield Span(index, line, pos + a, pos + e, nat, buf[starts_l(k + 1):ends_l(k + 1)], plain)
                index += 1
                line += nat + 2
                k = last + 1
            if k >= n_lines and eof:
                return
            if k == 0:
                chunk *= 2  # one frame larger than the chunk
            else:
                pos += starts_l(k) if k < n_lines else ends_l(n_lines - 1) + 1


def has_big_int(comment: bytes) -> bool:
    """Whether a comment line holds an integer token of 10+ digits, which the C parser would have wrapped to
    32 bits: asked only when an integer value from the comment line is used."""
    return _BIG_INT.search(comment) is not None


class CParser:
    """libextxyz's C reader on one open file: :meth:`read` parses the frame of a Span into ASE's
    conventions, or returns None when the frame must go through ASE (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        from extxyz import cextxyz  # noqa: PLC0415 (only the extxyz path needs the C parser)

        self._c = cextxyz
        self._fp = cextxyz.cfopen(str(path), "r")
        self._pos = 0  # where the C reader stands (-1: unknown)
        if not self._fp:
            raise OSError(f"{path}: cannot be opened by the C parser")
        if cextxyz._HAVE_C_READ and not cextxyz._USE_LEGACY_MARSHAL:  # the C-API reader, without its wrapper
            grammar, fp, read = cextxyz._kv_grammar.value, self._fp.value, cextxyz._ext_mod.read_frame
            self._read = lambda: read(grammar, fp, 1, None, 0)
        else:
            self._read = lambda: cextxyz.read_frame_dicts(self._fp, use_cleri=False)

    def close(self) -> None:
        if self._fp:
            self._c.cfclose(self._fp)
            self._fp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, span: Span):
        """(n_atoms, symbols, positions, cell, pbc, info, arrays, span) in ASE's conventions, or None."""
        comment = span.comment
        if not span.plain or b"[[" in comment or (_MINUS_ZERO_ANY.search(comment) and _MINUS_ZERO.search(comment)):
            return None
        if self._pos != span.offset:
            self._c.cfseek(self._fp, span.offset, 0)
        self._pos = -1
        try:
            nat, info, arrays = self._read()
        except Exception:  # the C parser refuses the frame: ASE gets its chance
            return None
        self._pos = self._c.cftell(self._fp)
        if nat != span.n_atoms or self._pos != span.end:
            return None
        return to_ase_conventions(nat, info, arrays, span)


def to_ase_conventions(nat: int, info: dict, arrays: dict, span: Span):
    """The C parser's dicts as ASE's reader leaves them (see the module docstring), with the span, or None."""
    symbols = arrays.pop("species", None)
    positions = arrays.pop("pos", None)
    if (symbols is None or positions is None or "Z" in arrays or "move_mask" in arrays
            or symbols.shape != (nat,) or positions.shape != (nat, 3) or positions.dtype.kind != "f"):
        return None
    info.pop("Properties", None)
    if not span.comment.strip():
        info.pop("comment", None)
    lattice = info.pop("Lattice", None)
    pbc = info.pop("pbc", None)
    if lattice is None:
        cell = np.zeros((3, 3))
    elif (isinstance(lattice, np.ndarray) and lattice.shape == (3, 3) and lattice.dtype.kind in "if"
          and not (lattice.dtype.kind == "i" and has_big_int(span.comment))):
        cell = lattice.T.astype(np.float64)
    else:
        return None
    if pbc is None:
        pbc = np.full(3, lattice is not None)
    elif isinstance(pbc, bool):
        pbc = np.full(3, pbc)
    elif not (isinstance(pbc, np.ndarray) and pbc.dtype.kind == "b" and pbc.shape == (3,)):
        return None
    for key in ("virial", "stress"):
        if key in info:
            v = info[key]
            if not (isinstance(v, np.ndarray) and v.shape == (3, 3) and v.dtype.kind in "if"):
                return None  # ASE refuses such a frame: it gets the chance to say so
            if key == "stress":
                info[key] = v[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    for key, v in info.items():
        if isinstance(v, np.ndarray) and v.ndim == 2 and key not in SPECIAL_3_3_KEYS:
            if v.shape != (3, 3):
                return None
            info[key] = v.ravel(order="F")  # 9 numbers as written (ASE keeps them flat)
    renamed = {COLUMN_NAMES.get(k, k): v for k, v in arrays.items()} if "charge" in arrays else arrays
    if not renamed.keys().isdisjoint(info):
        return None
    return nat, symbols, positions, cell, pbc, info, renamed, span
