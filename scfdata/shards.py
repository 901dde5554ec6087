"""Frame counting and the shard plan: which frames of which input file each shard ingests."""

from __future__ import annotations

import os
from pathlib import Path

import ase.io

from .ingest import IngestError


def _is_extxyz(path: Path, fmt: str | None) -> bool:
    return (fmt or "").lower() in ("extxyz", "xyz") or (fmt is None and path.suffix.lower() in (".xyz", ".extxyz"))


def count_frames(path: str | os.PathLike, fmt: str | None = None) -> int:
    """Number of frames; extxyz is counted from its atom-count lines without parsing the frames."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: input file not found; check the dataset's `inputs:` list")
    if not _is_extxyz(path, fmt):
        try:
            return sum(1 for _ in ase.io.iread(str(path), index=":", format=fmt))
        except Exception as e:
            raise IngestError(f"{path}: cannot be read by ase.io.iread ({type(e).__name__}: {e})") from None
    n = 0
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            head = fh.readline()
            if not head:
                return n
            lineno += 1
            if not head.strip():
                continue  # tolerate trailing blank lines
            try:
                natoms = int(head.split()[0])
            except ValueError:
                raise IngestError(
                    f"{path}: line {lineno}: expected the atom count of frame {n}, found {head[:60]!r}; "
                    "the file is not extended XYZ or is malformed there"
                ) from None
            for _ in range(natoms + 1):
                if not fh.readline():
                    raise IngestError(
                        f"{path}: truncated in frame {n} (starting at line {lineno}): expected {natoms} atom "
                        "lines; regenerate or cut the file before that frame"
                    )
            lineno += natoms + 1
            n += 1


def plan_shards(frame_counts: list[int], n_shards: int) -> list[list[tuple[int, int, int]]]:
    """Split the frames of all inputs into ``n_shards`` contiguous, balanced ranges.

    Returns per shard a list of (file index, start frame, stop frame). A shard may be empty.
    """
    if n_shards < 1:
        raise ValueError(f"the shard count must be >= 1, got {n_shards}")
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
