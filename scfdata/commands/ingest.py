"""`scfdata index` (count frames, plan shards) and `scfdata ingest` (frames -> scfdata HDF5)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from ..h5io import StreamWriter
from ..ingest import check_keys_found, ingest, sha256
from ..keys import KeyMapping, mapping_for_dataset
from ..provenance import versions
from ..shards import count_frames, plan_shards
from ..validate import ValidationOptions

log = logging.getLogger("scfdata.ingest")


def register(sub) -> None:
    p = sub.add_parser("index", help="count the frames of the inputs and plan the shards (workflow step)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--format", default=None, help="ase.io format (default: from the file name)")
    p.add_argument("-o", "--output", required=True, help="index JSON")
    p.set_defaults(func=run_index)

    p = sub.add_parser("ingest", help="read DFT frames (any ase.io format) into an scfdata HDF5 file")
    p.add_argument("inputs", nargs="*", help="input files (or use --index/--shard)")
    p.add_argument("-o", "--output", required=True, help="output .h5")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keys", help="YAML with info_keys/arrays_keys (a MACE_SCF heads block also works)")
    g.add_argument("--keys-from", help="a MACE_SCF training config: its first head's keys")
    p.add_argument("--settings", help="JSON: the workflow's dataset block and validation options")
    p.add_argument("--index", help="index JSON from `scfdata index`")
    p.add_argument("--shard", type=int, help="shard number in the index")
    p.add_argument("--on-error", choices=["reject", "raise"], default=None,
                   help="reject bad configs with a reason (default in the workflow) or stop (default here)")
    p.add_argument("--format", default=None, help="ase.io format (default: from the file name)")
    p.set_defaults(func=run_ingest)


def run_index(args) -> int:
    inputs = [{"path": str(p), "sha256": sha256(p), "n_frames": count_frames(p, args.format)}
              for p in args.inputs]
    plan = plan_shards([i["n_frames"] for i in inputs], args.shards)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"inputs": inputs, "shards": plan, "format": args.format}, indent=1))
    log.info("indexed %d frames in %d files into %d shards", sum(i["n_frames"] for i in inputs),
             len(inputs), len(plan))
    return 0


def run_ingest(args) -> int:
    settings = json.loads(args.settings) if args.settings else {}
    if args.keys:
        raw = yaml.safe_load(Path(args.keys).read_text()) or {}
        mapping = (KeyMapping.from_mace_scf_config(args.keys) if "heads" in raw
                   else KeyMapping.from_dict(raw, where=args.keys))
    elif args.keys_from:
        mapping = KeyMapping.from_mace_scf_config(args.keys_from)
    else:
        mapping = mapping_for_dataset(settings, where="dataset")
    options = ValidationOptions(**settings.get("validation", {}))
    on_error = args.on_error or settings.get("on_error") or ("reject" if args.index else "raise")
    if args.index:
        index = json.loads(Path(args.index).read_text())
        if args.shard is None or not 0 <= args.shard < len(index["shards"]):
            raise ValueError(f"--shard must be in 0..{len(index['shards']) - 1}, got {args.shard}")
        inputs = index["inputs"]
        ranges = [(f, inputs[f]["path"], a, b) for f, a, b in index["shards"][args.shard]]
        fmt = index.get("format")
    else:
        if not args.inputs:
            raise ValueError("give input files, or --index and --shard")
        inputs = [{"path": str(p), "sha256": sha256(p)} for p in args.inputs]
        ranges = [(f, p, 0, None) for f, p in enumerate(args.inputs)]
        fmt = args.format
    provenance = {
        "inputs": inputs,
        "key_mapping": mapping.as_dict(),
        "validation": options.__dict__,
        "on_error": on_error,
        "versions": versions(),
    }
    writer = StreamWriter(args.output, provenance=provenance)
    t0 = time.perf_counter()
    last = [t0]

    def progress(n):
        now = time.perf_counter()
        if now - last[0] > 5:
            log.info("%s: %d frames read (%.0f/s)", args.output, n, n / (now - t0))
            last[0] = now

    try:
        result = ingest(writer, ranges, mapping, on_error=on_error, options=options, fmt=fmt,
                        progress=progress)
        if args.index is None:
            check_keys_found(result.coverage, result.keys_seen, mapping, where=", ".join(args.inputs))
    except BaseException:
        writer.abort()
        raise
    writer.provenance["ingest"] = {"coverage": result.coverage, "keys_seen": sorted(result.keys_seen)}
    writer.close()
    log.info("%s: read %d, written %d, rejected %d (%.1f s)", args.output, result.n_read, result.n_written,
             len(result.rejects), time.perf_counter() - t0)
    return 0
