"""The index's pass over one extxyz file at numpy speed: frames, header keys, checkpoints and sha256 from a
single read of the file, in chunks.

Framing: per chunk, the line ends (``np.flatnonzero`` on the bytes), the blank lines, and the short lines
that are a plain atom count (parsed as arrays) are found at once; a frame starts at such a line and the next
one ``n_atoms + 2`` lines on (blank lines between frames skipped), so the frames of a chunk are its count
lines that chain from one to the next: checked for all of them at once. Where the chain breaks (a count
line that is not plain, a blank line inside a frame, a comment line that is only a number) that one frame
is framed as :func:`scfdata.extxyz_reader.iter_spans` does, or, if it is malformed, read by
:func:`scfdata.ingest.scan_extxyz` (which names the error), and the vectorised framing goes on after it.
So the frames, their lines, offsets and errors are those of the line-by-line framing.

Headers: each comment line's keys and column widths (:func:`scfdata.shards._header_keys`) are tallied per
distinct *signature*: the comment with each value that is a run of number characters right after ``=`` and
before whitespace or the line end (``energy=-98.99``) cut to one ``#``. Comments with the same signature differ
only at such places, each right after an ``=`` and holding a number or ``#``: characters the key=value grammar
reads as plain value text, where a key cannot start. So they have the same keys, and the same ``Properties``
widths unless ``Properties`` holds an ``=`` (such signatures, and comments that are not plain key=value text,
go through frame by frame). A file of 200k configs with a few key sets costs a few header parses, not 200k.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .extxyz_reader import _WHITESPACE, MAX_FRAME_ATOMS

#: Bytes read per chunk (a frame larger than that doubles the read).
CHUNK = 1 << 22
#: Lines longer than this are never taken for a plain count line by the vectorised test (a padded count
#: line is framed one by one instead).
_COUNT_WIDTH = 24
_DIGIT = np.zeros(256, bool)
_DIGIT[list(b"0123456789")] = True
#: Characters of a number value: digits, sign, point, exponent.
_NUMBER = _DIGIT.copy()
_NUMBER[list(b"+-.eE")] = True
_HASH = ord("#")
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_NL, _EQ = 10, ord("=")


def _line_bounds(raw: np.ndarray, eof: bool) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (offset of the newline) of every complete line; at the end of the file the last line
    needs no newline."""
    ends = np.flatnonzero(raw == _NL)
    if eof and len(raw) and raw[-1] != _NL:
        ends = np.append(ends, len(raw))
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends


def _blank_lines(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each line is whitespace only: the lines that start with whitespace (or are empty) are checked
    by windows of growing width (8, 16, ... bytes), all at once."""
    blank = np.zeros(len(starts), bool)
    if not len(starts):
        return blank
    last = len(raw) - 1
    cand = np.flatnonzero(_WHITESPACE[raw[np.minimum(starts, last)]] | (starts == ends))
    lo, hi, width = starts[cand], ends[cand], 8
    while len(cand):
        at = lo[:, None] + np.arange(width)
        text = ~_WHITESPACE[raw[np.minimum(at, last)]] & (at < hi[:, None])
        found = text.any(axis=1)
        done = found | (lo + width >= hi)
        blank[cand[done & ~found]] = True
        cand, lo, hi, width = cand[~done], lo[~done] + width, hi[~done], width * 2
    return blank


def _count_lines(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray, blank: np.ndarray):
    """(lines, counts): the lines of at most _COUNT_WIDTH bytes that are one run of at most 18 digits between
    whitespace, and the number each holds."""
    short = np.flatnonzero((ends - starts <= _COUNT_WIDTH) & ~blank)
    if not len(short):
        return short, short
    at = starts[short, None] + np.arange(_COUNT_WIDTH)
    inside = at < ends[short, None]
    text = raw[np.minimum(at, len(raw) - 1)]
    digit = _DIGIT[text] & inside
    plain = (digit | _WHITESPACE[text] | ~inside).all(axis=1)
    runs = (digit[:, 1:] & ~digit[:, :-1]).sum(axis=1) + digit[:, 0]
    n_digits = digit.sum(axis=1)
    ok = plain & (runs == 1) & (n_digits <= 18)
    place = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - 1  # digits to the right of each digit
    values = np.where(digit, (text.astype(np.int64) - 48) * _POW10[np.clip(place, 0, 18)], 0).sum(axis=1)
    return short[ok], values[ok]


@dataclass
class _Chunk:
    """The frames of one buffer: per frame framed by :class:`_Framer` (in file order), index, line in the
    buffer; frames read by scan_extxyz come as FrameText in ``others``."""

    index: list = field(default_factory=list)
    line: list = field(default_factory=list)
    others: list = field(default_factory=list)


class _Framer:
    """Frames of one buffer (see the module docstring); :meth:`frame` returns how far it got."""

    def __init__(self, path, raw: np.ndarray, eof: bool):
        self.path, self.raw, self.eof = path, raw, eof
        self.starts, self.ends = _line_bounds(raw, eof)
        self.n_lines = len(self.ends)
        self.blank = _blank_lines(raw, self.starts, self.ends)
        self.nonblank = np.flatnonzero(~self.blank)
        self._nonblank_or_end = np.append(self.nonblank, self.n_lines)
        self.blank_before = np.concatenate([[0], np.cumsum(self.blank)])
        d, nat = _count_lines(raw, self.starts, self.ends, self.blank)
        last = d + nat + 1
        complete = last < self.n_lines
        cut = np.minimum(last + 1, self.n_lines)
        inner_blank = self.blank_before[cut] - self.blank_before[np.minimum(d + 2, self.n_lines)] > 0
        ok = (nat > 0) & (nat <= MAX_FRAME_ATOMS) & complete & ~inner_blank
        self.nxt = self._next_nonblank(cut)
        linked = np.zeros(len(d), bool)
        linked[1:] = self.nxt[:-1] == d[1:]
        self.d, self.nat, self.ok = d, nat, ok
        self.bad_ok, self.bad_link = np.flatnonzero(~ok), np.flatnonzero(~linked)

    def _next_nonblank(self, k):
        """First non-blank line at or after line(s) k (n_lines: none)."""
        return self._nonblank_or_end[np.searchsorted(self.nonblank, k)]

    def frame(self, out: _Chunk, index: int, line_base: int, pos: int):
        """Frame from the buffer's start. Returns (status, lines consumed, bytes consumed, next index, skip):
        status "more" (read more before going on), "done" (end of file), "skip" (a frame read by scan_extxyz
        ends past the buffer: go on at file offset ``skip``, line ``lines consumed``)."""
        from .ingest import scan_extxyz  # noqa: PLC0415 (the line-by-line scanner names malformed frames)

        k = 0
        d, n_lines = self.d, self.n_lines
        while True:
            ks = int(self._next_nonblank(k))
            if ks >= n_lines:  # no complete line left but blank ones
                status = "done" if self.eof else "more"
                return status, n_lines, (int(self.ends[-1]) + 1 if n_lines else 0), index, None
            i0 = int(np.searchsorted(d, ks))
            if i0 < len(d) and d[i0] == ks and self.ok[i0]:
                a = np.searchsorted(self.bad_ok, i0)
                b = np.searchsorted(self.bad_link, i0 + 1)
                p = min(int(self.bad_ok[a]) if a < len(self.bad_ok) else len(d),
                        int(self.bad_link[b]) if b < len(self.bad_link) else len(d))
                out.index.append(np.arange(index, index + p - i0))
                out.line.append(d[i0:p])
                index += p - i0
                k = int(d[p - 1] + self.nat[p - 1] + 2)
                continue
            s, e = int(self.starts[ks]), int(self.ends[ks])
            head = self.raw[s:e].tobytes().strip()
            # (an int() of 4,300+ digits raises; no count has 19)
            if head.isdigit() and len(head) <= 18 and 0 < int(head) <= MAX_FRAME_ATOMS:
                last = ks + int(head) + 1
                if last >= n_lines and not self.eof:
                    return "more", ks, s, index, None
                if last < n_lines and self.blank_before[last + 1] - self.blank_before[ks + 2] == 0:
                    out.index.append(np.array([index]))
                    out.line.append(np.array([ks]))
                    index += 1
                    k = last + 1
                    continue
            frame = next(scan_extxyz(self.path, offset=pos + s, line=line_base + ks, index=index))
            out.others.append(frame)
            index += 1
            end = frame.end - pos
            k = int(np.searchsorted(self.starts, end))
            if k >= n_lines or self.starts[k] != end:  # the frame ends past the complete lines
                return "skip", frame.line + frame.n_atoms + 2 - line_base, len(self.raw), index, frame.end


def _signatures(raw: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> list[bytes]:
    """The signature of each comment raw[cs:ce] (module docstring): after each ``=``, a run of number
    characters that ends the comment or is followed by whitespace is cut to one ``#``. Vectorised over the
    comments, which are gathered with their line ends: the joined signatures are split at those."""
    lens = ce - cs + 1
    seg = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=seg[1:])
    total = int(seg[-1])
    small = np.int32 if len(raw) < 2**31 else np.int64
    text = raw[np.arange(total, dtype=small) + np.repeat((cs - seg[:-1]).astype(small), lens)]
    eq = np.flatnonzero(text == _EQ)
    if len(eq):
        num = _NUMBER[text]
        run_end = np.flatnonzero(num[:-1] & ~num[1:])  # (each comment ends in a line end: no run leaves it)
        stop = np.where(num[eq + 1], run_end[np.minimum(np.searchsorted(run_end, eq + 1), len(run_end) - 1)]
                        + 1, eq + 1) if len(run_end) else eq + 1
        cut = (stop > eq + 1) & _WHITESPACE[text[stop]]
        eq, drop = eq[cut], (stop - eq - 2)[cut]
        text[eq + 1] = _HASH
        n_drop = int(drop.sum())
        if n_drop:
            keep = np.ones(total, bool)
            keep[np.repeat(eq + 2 - (np.cumsum(drop) - drop), drop) + np.arange(n_drop)] = False
            text = text[keep]
    return text.tobytes().split(b"\n")[:-1]


class _HeaderTally:
    """Keys, column counts and first frames of the headers, as :func:`scfdata.shards.scan_input` adds them
    frame by frame: fed per signature group (first frame, count) or per frame, replayed in frame order."""

    def __init__(self, header_keys):
        self.header_keys = header_keys
        self.groups: dict[bytes, list] = {}  # signature -> [first frame, count, keys, widths]; None: by frame
        self.frames: list = []  # (frame, keys, widths) of frames tallied one by one

    def add_comments(self, raw: np.ndarray, frames: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> None:
        sigs = _signatures(raw, cs, ce)
        for sig, count in Counter(sigs).items():
            group = self.groups.get(sig, ())
            if group == ():
                at = sigs.index(sig)
                group = self.groups[sig] = self._group(raw[cs[at]:ce[at]].tobytes(), int(frames[at]))
            if group is not None:
                group[1] += count
                continue
            for m in np.flatnonzero(np.array(sigs, dtype=object) == sig).tolist():
                self.add_frame(int(frames[m]), raw[cs[m]:ce[m]].tobytes())

    def _group(self, comment: bytes, frame: int):
        """[frame, 0, keys, widths] for a new signature, None when its frames need tallying one by one."""
        from .shards import _comment_keys  # noqa: PLC0415

        info = _comment_keys(comment.decode("utf-8", errors="replace").strip())
        if info is None or "=" in info.get("Properties", ""):
            return None
        return [frame, 0, *self.header_keys(comment)]

    def add_frame(self, frame: int, comment: bytes) -> None:
        self.frames.append((frame, *self.header_keys(comment), 1))

    def result(self) -> tuple[set, dict, dict]:
        events = [(g[0], g[2], g[3], g[1]) for g in self.groups.values() if g is not None] + self.frames
        keys: set[str] = set()
        columns: dict[str, dict[str, int]] = {}
        first: dict[str, dict[str, int]] = {}
        for frame, frame_keys, widths, count in sorted(events, key=lambda e: e[0]):
            keys.update(frame_keys)
            for key, w in widths.items():
                per = columns.setdefault(key, {})
                per[str(w)] = per.get(str(w), 0) + count
                first.setdefault(key, {}).setdefault(str(w), frame)
        return keys, columns, first


def index_extxyz(path: str | os.PathLike, every: int, header_keys, chunk: int = CHUNK) -> dict:
    """``{"sha256", "n_frames", "keys", "columns", "first_frames", "checkpoints"}`` of an extxyz file (as
    :func:`scfdata.shards.scan_input` returns them), from one read in chunks of ``chunk`` bytes;
    ``header_keys(comment) -> (keys, widths)``; a checkpoint every ``every`` frames."""
    sha, pending = hashlib.sha256(), queue.SimpleQueue()
    hasher = threading.Thread(target=_hash_all, args=(sha, pending), daemon=True)
    hasher.start()  # (hashlib lets go of the GIL: the sha256 runs beside the framing)
    try:
        tally, checkpoints, index = _frame_file(path, every, header_keys, chunk, pending.put)
    finally:
        pending.put(None)
        hasher.join()
    keys, columns, first = tally.result()
    checkpoints.sort()
    return {"sha256": sha.hexdigest(), "n_frames": index, "keys": sorted(keys), "columns": columns,
            "first_frames": first, "checkpoints": checkpoints}


def _hash_all(sha, pending: queue.SimpleQueue) -> None:
    while (data := pending.get()) is not None:
        sha.update(data)


def _frame_file(path, every: int, header_keys, chunk: int, read_bytes) -> tuple[_HeaderTally, list, int]:
    """Frame a file in chunks (each chunk read is also given to ``read_bytes``): (tally, checkpoints, frames)."""
    tally = _HeaderTally(header_keys)
    checkpoints = []
    buf, pos, line_base, index, skip, eof, size = b"", 0, 1, 0, None, False, chunk
    with open(path, "rb") as fh:
        while True:
            data = fh.read(size)
            read_bytes(data)
            eof = eof or not data
            if skip is not None:  # the bytes before `skip` are in a frame already read
                if pos + len(data) <= skip:
                    pos += len(data)
                    if eof:
                        break
                    continue
                data, pos, skip = data[skip - pos:], skip, None
            buf = buf + data if buf else data
            framer = _Framer(path, np.frombuffer(buf, np.uint8), eof)
            out = _Chunk()
            status, lines, used, index_after, skip = framer.frame(out, index, line_base, pos)
            _collect(framer, out, tally, checkpoints, every, line_base, pos)
            size = size * 2 if status == "more" and index_after == index else chunk
            index = index_after
            line_base += lines
            if status == "done":
                break
            if status == "skip" and skip - pos <= len(buf):  # it ends in the partial line at the end
                buf, pos, skip = buf[skip - pos:], skip, None
            elif status == "skip":
                buf, pos = b"", pos + len(buf)
            else:
                buf, pos = buf[used:], pos + used
    return tally, checkpoints, index


def _collect(framer: _Framer, out: _Chunk, tally: _HeaderTally, checkpoints: list, every: int, line_base: int,
             pos: int) -> None:
    """Tally the headers and take the checkpoints of the frames of one buffer."""
    if out.index:
        frames, lines = np.concatenate(out.index), np.concatenate(out.line)
        tally.add_comments(framer.raw, frames, framer.starts[lines + 1], framer.ends[lines + 1])
        at = np.flatnonzero(frames % every == 0)
        checkpoints += np.stack([frames[at], pos + framer.starts[lines[at]], line_base + lines[at]],
                                axis=1).tolist()
    for frame in out.others:
        tally.add_frame(frame.index, frame.comment)
        if frame.index % every == 0:
            checkpoints.append([frame.index, frame.offset, frame.line])
