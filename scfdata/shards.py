"""Frame counting and the shard plan: which frames of which input file each shard ingests."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .extxyz_index import CHUNK, index_extxyz
from .extxyz_reader import COLUMN_NAMES
from .ingest import IngestError, check_input_file, is_extxyz, keys_of, scan_extxyz, sha256

#: Frames between the index's checkpoints (frame, byte offset, line): a shard job frames at most this many
#: frames (without parsing them) after seeking to the checkpoint before its first frame.
CHECKPOINT_EVERY = 1024


def count_frames(path: str | os.PathLike, fmt: str | None = None) -> int:
    """Number of frames; extxyz is counted from its atom-count lines without parsing the frames."""
    return scan_input(path, fmt)["n_frames"]


#: One ``key[=value]`` of an extxyz comment line; values quoted with "", '', {} or [] may hold spaces.
_KEY_VALUE = re.compile(
    r"""([^\s="'{}\[\]]+)"""
    r"""(?:\s*=\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\{[^}]*\}|\[[^\]]*\]|[^\s"'{}\[\]]*))?(?:\s+|$)""")


def _comment_keys(line: str) -> dict[str, str] | None:
    """key -> raw value of a comment line (None when the line is not plain key=value text). Only names are
    needed here: ~20x faster than ase's character parser, which reads the values too."""
    out, pos = {}, len(line) - len(line.lstrip())
    while pos < len(line):
        m = _KEY_VALUE.match(line, pos)
        if m is None or m.end() == pos:
            return None
        out[m.group(1)] = m.group(2) or ""
        pos = m.end()
    return out


def _header_keys(comment: bytes) -> tuple[set[str], dict[str, int]]:
    """Keys of one extxyz comment line and the column count of each ``Properties`` entry (ase's names
    too: pos -> positions, Z -> numbers, charge -> charges, species -> symbols)."""
    line = comment.decode("utf-8", errors="replace").strip()
    info = _comment_keys(line)
    if info is None:
        from ase.io.extxyz import key_val_str_to_dict

        try:
            info = key_val_str_to_dict(line)
        except Exception:  # not key=value text: a plain xyz comment (ase keeps it as `comment`)
            return {"comment"}, {}
    props = info.pop("Properties", "")
    if isinstance(props, np.ndarray):  # ase's parser read a list of numbers: no column names (was a crash)
        props = " ".join(map(str, props.ravel()))
    props = str(props or "species:S:1:pos:R:3").strip("\"'{}[]").split(":")
    widths = {}
    for k in range(0, len(props) - 2, 3):
        try:
            widths[props[k]] = int(props[k + 2])
        except ValueError:
            continue
    for raw, name in COLUMN_NAMES.items():
        if raw in widths:
            widths[name] = widths[raw]
    info.pop("Lattice", None)
    return set(info) | set(widths), widths


def index_input(path: str | os.PathLike, fmt: str | None = None, parser: str = "auto",
                chunk: int = CHUNK) -> dict:
    """The index's entry of one input: ``{"path", "sha256", **scan_input(...), "size", "mtime_ns"}``, the
    file's size and modification time as found before reading it (a shard job checks them: a file changed
    since indexing is refused, not read at stale offsets). extxyz is read once (frames and sha256 from the
    same chunks) unless ``parser`` is ``ase``."""
    check_input_file(path)
    st = os.stat(path)
    if is_extxyz(path, fmt) and parser != "ase":
        scan = index_extxyz(path, CHECKPOINT_EVERY, _header_keys, chunk)
        digest = scan.pop("sha256")
    else:
        scan, digest = scan_input(path, fmt, parser), sha256(path)
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise IngestError(f"{path}: changed while `scfdata index` read it ({st.st_size} bytes before, "
                          f"{after.st_size} after); rerun `scfdata index` once the file is complete")
    return {"path": str(path), "sha256": digest, **scan, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scan_input(path: str | os.PathLike, fmt: str | None = None, parser: str = "auto", chunk: int = CHUNK) -> dict:
    """Frame count, the keys found in the frames, and the column count of each per-atom key.

    extxyz: from the comment lines and ``Properties=`` (no frame parsed); other formats: every frame read
    by ase.io.iread. Returns ``{"n_frames", "keys": sorted list, "columns": {key: {width: n_frames}},
    "first_frames": {key: {width: first frame with that width}}, "checkpoints": [[frame, byte offset, line],
    ...] (extxyz: every CHECKPOINT_EVERY frames)}``. ``parser``: ``ase`` frames extxyz line by line and
    reads every header, otherwise :func:`scfdata.extxyz_index.index_extxyz` frames it per ``chunk`` bytes
    and reads each distinct header once (the same frames, errors and keys).
    """
    path = Path(path)
    check_input_file(path)
    if is_extxyz(path, fmt) and parser != "ase":
        scan = index_extxyz(path, CHECKPOINT_EVERY, _header_keys, chunk)
        del scan["sha256"]
        return scan
    keys: set[str] = set()
    columns: dict[str, dict[str, int]] = {}
    first: dict[str, dict[str, int]] = {}
    n = 0

    def add(frame: int, frame_keys, widths: dict[str, int]):
        keys.update(frame_keys)
        for key, w in widths.items():
            per = columns.setdefault(key, {})
            per[str(w)] = per.get(str(w), 0) + 1
            first.setdefault(key, {}).setdefault(str(w), frame)

    checkpoints = []
    if is_extxyz(path, fmt):
        for frame in scan_extxyz(path):
            if frame.index % CHECKPOINT_EVERY == 0:
                checkpoints.append([frame.index, frame.offset, frame.line])
            add(frame.index, *_header_keys(frame.comment))
            n += 1
    else:
        import ase.io

        try:
            for n, atoms in enumerate(ase.io.iread(str(path), index=":", format=fmt), start=1):
                add(n - 1, keys_of(atoms), {k: int(np.prod(v.shape[1:], dtype=int))
                                             for k, v in atoms.arrays.items()})
        except Exception as e:
            raise IngestError(f"{path}: cannot be read by ase.io.iread at frame {n} "
                              f"({type(e).__name__}: {e})") from None
    return {"n_frames": n, "keys": sorted(keys), "columns": columns, "first_frames": first,
            "checkpoints": checkpoints}


#: Most shards a dataset can be cut into (each is one job per shard-level rule).
MAX_SHARDS = 100_000


def plan_shards(frame_counts: list[int], n_shards: int) -> list[list[tuple[int, int, int]]]:
    """Split the frames of all inputs into ``n_shards`` contiguous, balanced ranges.

    Returns per shard a list of (file index, start frame, stop frame). A shard may be empty.
    """
    if not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"the shard count must be in 1..{MAX_SHARDS}, got {n_shards}; use fewer shards "
                         "(`shards:` in the config or --set-scatter shard=N)")
    total = sum(frame_counts)
    bounds = [k * total // n_shards for k in range(n_shards + 1)]
    offsets = [0]
    for c in frame_counts:
        offsets.append(offsets[-1] + c)
    plan = []
    for k in range(n_shards):
        lo, hi = bounds[k], bounds[k + 1]
        ranges = []
        for f, c in enumerate(frame_counts):
            a, b = max(lo, offsets[f]), min(hi, offsets[f] + c)
            if a < b:
                ranges.append((f, a - offsets[f], b - offsets[f]))
        plan.append(ranges)
    return plan
