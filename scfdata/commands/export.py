"""`scfdata export FILE.h5 --format mace|extxyz -o OUT`: what MACE and MACE_SCF train on, unchanged.

``--format mace``: ``OUT`` is a directory in the layout of MACE's ``preprocess_data``:
``OUT/<split>/<split>_<k>.h5`` (split from the input name: train, valid -> val, test), one file per
shard, plus ``OUT/statistics.json`` (plain JSON numbers) and ``OUT/statistics_mace.json`` (the same
values in the string encoding MACE's ``--statistics_file`` parses) when the split is ``train``.
``--format extxyz``: ``OUT`` is one extxyz file; ``--keys-out`` writes the matching MACE_SCF
``heads:`` config (also readable by ``scfdata ingest --keys``).

Sharding (for the workflow): ``--n-shards N --shard K`` exports only the K-th of N contiguous row
ranges (mace: to ``<split>_<K>.h5``; extxyz: to ``OUT``); without ``--shard`` every shard is written.
A shard without configs (more shards than configs) writes no MACE file (and removes one left by an
earlier run); an input without configs, an output that is the input or of the wrong kind (file vs
directory) are one-line errors.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from .. import export as ex
from ..h5io import ScfdataFile, read_columns
from ..h5io_mace import write_mace_file
from ..statistics import UnderdeterminedWarning
from .statistics import E0_HELP, read_e0_option

log = logging.getLogger("scfdata.export")

#: input file stem -> (directory, file prefix) as MACE's preprocess_data names them
MACE_SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def register(sub) -> None:
    p = sub.add_parser("export", help="write MACE's HDF5 layout or extxyz with the derived fields")
    p.add_argument("input", help="an scfdata .h5 file (one split)")
    p.add_argument("--format", required=True, choices=["mace", "extxyz"])
    p.add_argument("-o", "--output", required=True, help="mace: output directory; extxyz: output file")
    p.add_argument("--names", default=None,
                   help="renames FIELD=KEY,... (extxyz keys; mace property names). Default: REF_<name> "
                        "in extxyz, MACE_SCF's names (electrostatic_potentials, molID, ...) in mace")
    p.add_argument("--chunk-size", type=int, default=4096, help="configs read into memory at a time")
    p.add_argument("--n-shards", type=int, default=1, help="split the configs into N contiguous shards")
    p.add_argument("--shard", type=int, default=None, help="export only this shard (0..N-1)")
    p.add_argument("--split", default=None, help="split name (default: the input file's stem)")
    p.add_argument("--head", default="Default", help="MACE head name written with every config")
    p.add_argument("--r-max", type=float, default=5.0, help="cutoff for avg_num_neighbors in statistics")
    p.add_argument("--no-statistics", action="store_true", help="do not write statistics.json")
    p.add_argument("--e0", default=None, help="statistics.json: " + E0_HELP)
    p.add_argument("--keys-out", default=None, help="extxyz: write the MACE_SCF heads config here")
    p.set_defaults(func=run)


def shard_rows(n_configs: int, n_shards: int, shard: int | None) -> list[tuple[int, np.ndarray]]:
    if n_shards < 1:
        raise ValueError(f"--n-shards must be >= 1, got {n_shards}")
    parts = np.array_split(np.arange(n_configs, dtype=np.int64), n_shards)
    if shard is None:
        return list(enumerate(parts))
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard must be in 0..{n_shards - 1}, got {shard}")
    return [(shard, parts[shard])]


def _chunks(path, rows: np.ndarray, size: int):
    for s in range(0, len(rows), size):
        cols, _ = read_columns(path, rows[s : s + size])
        yield cols


def _atomic_write_text(path: Path, parts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            for text in parts:
                fh.write(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def check_arguments(args, src: Path, n_configs: int) -> None:
    """Refuse, with one line each, what would write nothing useful or a wrong place: an input without
    configs, an output that is the input, a directory where a file goes (and the reverse), an output
    location that cannot be written, and options out of range."""
    if n_configs == 0:
        raise ValueError(f"{src}: holds 0 configs, nothing to export; export a split file that holds configs "
                         "(`scfdata inspect` shows the counts)")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    out = Path(args.output)
    if out.resolve() == src.resolve():
        raise ValueError(f"-o {out}: is the input file; give another output path")
    if args.format == "mace" and out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: is a file; --format mace writes a directory (give a new or existing "
                         "directory)")
    if args.format == "extxyz" and out.is_dir():
        raise ValueError(f"-o {out}: is a directory; --format extxyz writes one file (give a file name)")
    if args.keys_out and Path(args.keys_out).is_dir():
        raise ValueError(f"--keys-out {args.keys_out}: is a directory; give a file name (e.g. heads.yaml)")
    for opt, path in (("-o", out if args.format == "mace" else out.parent),
                      ("--keys-out", Path(args.keys_out).parent if args.keys_out else None)):
        if path is None:
            continue
        parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{opt}: cannot write under {parent} (not a writable directory); choose another "
                             "output location")


def statistics(path, e0: dict | None = None) -> dict:
    """statistics.json content (plain numbers) for a whole scfdata file; an under-determined E0 fit is
    logged as a warning (and listed under ``warnings``)."""
    with ScfdataFile(path) as f, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnderdeterminedWarning)
        e = np.asarray(f.read("energy")) if f.has("energy") else np.zeros(f.n_configs)
        stats = ex.energy_statistics(e, np.asarray(f.read("numbers")), f.atom_ptr, f.mask("energy"), e0=e0)
        stats["n_configs"] = f.n_configs
    stats["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UnderdeterminedWarning)]
    for w in stats["warnings"]:
        log.warning("%s: %s", path, w)
    return stats


def run(args) -> int:
    t0 = time.perf_counter()
    src = Path(args.input)
    renames = ex.parse_names(args.names)
    with ScfdataFile(src) as f:
        n = f.n_configs
    check_arguments(args, src, n)
    plan = shard_rows(n, args.n_shards, args.shard)
    if args.format == "extxyz":
        if args.n_shards > 1 and args.shard is None:
            raise ValueError("extxyz writes one file: give --shard K with --n-shards N (or no sharding)")
        rows = plan[0][1]
        probe, _ = read_columns(src, rows[:1]) if len(rows) else read_columns(src, np.arange(1))
        keys = ex.extxyz_keys(ex.exported_fields(probe), renames)
        _atomic_write_text(Path(args.output),
                           (ex.extxyz_text(c, keys) for c in _chunks(src, rows, args.chunk_size)))
        if args.keys_out:
            Path(args.keys_out).write_text(yaml.safe_dump(ex.heads_config(keys, args.head), sort_keys=False))
        done = len(rows)
    else:
        split = args.split or src.stem
        prefix = MACE_SPLITS.get(split, split)
        out = Path(args.output)
        done = 0
        for k, rows in plan:
            target = out / prefix / f"{prefix}_{k}.h5"
            if len(rows) == 0:  # more shards than configs: no file (MACE reads every file of the directory)
                target.unlink(missing_ok=True)
                log.info("%s: shard %d of %d holds no config: no file written", src, k, args.n_shards)
                continue
            blocks = (ex.mace_block(c, head=args.head, renames=renames) for c in _chunks(src, rows, args.chunk_size))
            write_mace_file(target, blocks)
            done += len(rows)
        if split == "train" and not args.no_statistics and (args.shard in (None, 0)):
            stats = statistics(src, read_e0_option(args.e0))
            with ScfdataFile(src) as f:
                stats["avg_num_neighbors"] = ex.avg_num_neighbors(
                    np.asarray(f.read("positions")), np.asarray(f.read("cell")), np.asarray(f.read("pbc")),
                    f.atom_ptr, args.r_max)
            stats["r_max"] = args.r_max
            out.mkdir(parents=True, exist_ok=True)
            (out / "statistics.json").write_text(json.dumps(stats, indent=1))
            if stats["mean"] is not None:
                (out / "statistics_mace.json").write_text(json.dumps(ex.mace_statistics_strings(stats), indent=1))
    dt = time.perf_counter() - t0
    log.info("%s -> %s (%s): %d configs in %.2f s (%.0f configs/s)", src, args.output, args.format, done, dt,
             done / dt if dt else 0.0)
    return 0
