"""`scfdata index` (count frames, plan shards) and `scfdata ingest` (frames -> scfdata HDF5).

Both refuse, before reading any frame, an empty input file and a file whose ase.io format is unknown
(with the fix: ``--format`` here, ``format:`` in the workflow's dataset block). ``index`` also refuses
an input in which it counts no frame, so the workflow never writes an empty dataset.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..h5io import StreamWriter
from ..ingest import IngestError, check_keys_found, ingest, sha256
from ..keys import KeyMapping, load_yaml, mapping_for_dataset
from ..provenance import versions
from ..shards import count_frames, plan_shards
from ..validate import ValidationOptions
from . import json_file, json_option

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


_FORMAT_FIX = ("give the format: `--format NAME` on the command line, or `format: NAME` in the dataset's "
               "block of the workflow config (NAME: an ase.io format, e.g. extxyz, vasp-out, aims-output; "
               "see `ase info --formats`)")


def check_readable(path: str | Path, fmt: str | None) -> None:
    """Refuse an empty file and a format ase.io cannot read (unknown name or file type), naming the file.
    A missing file is left to the reader (which names it)."""
    from ase.io.formats import UnknownFileTypeError, filetype, get_ioformat

    path = Path(path)
    if not path.is_file():
        return
    if path.stat().st_size == 0:
        raise IngestError(f"no frames in {path}: the file is empty; remove it from the inputs or regenerate it")
    try:
        name = fmt or filetype(str(path), read=True)
    except UnknownFileTypeError as e:
        raise IngestError(f"{path}: ase.io cannot tell the file format from its name or content ({e}); "
                          f"{_FORMAT_FIX}") from None
    try:
        io = get_ioformat(name)
    except UnknownFileTypeError:
        what = f"--format {fmt!r} is not an ase.io format" if fmt else \
            f"ase.io has no reader for {name!r} (the format guessed from the file name and content)"
        raise IngestError(f"{path}: {what}; {_FORMAT_FIX}") from None
    if not io.can_read:
        raise IngestError(f"{path}: ase.io can write format {name!r} but not read it; {_FORMAT_FIX}")


def run_index(args) -> int:
    for p in args.inputs:
        check_readable(p, args.format)
    inputs = [{"path": str(p), "sha256": sha256(p), "n_frames": count_frames(p, args.format)}
              for p in args.inputs]
    for i in inputs:
        if i["n_frames"] == 0:
            raise IngestError(f"no frames in {i['path']}: 0 frames counted (format "
                              f"{args.format or 'from the file name'}); remove it from the inputs, regenerate "
                              "it, or check `--format` (the dataset's `format:`)")
    plan = plan_shards([i["n_frames"] for i in inputs], args.shards)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"inputs": inputs, "shards": plan, "format": args.format}, indent=1))
    log.info("indexed %d frames in %d files into %d shards", sum(i["n_frames"] for i in inputs),
             len(inputs), len(plan))
    return 0


def run_ingest(args) -> int:
    settings = json_option(args.settings, "--settings", "a JSON object of the dataset's settings") \
        if args.settings else {}
    if args.keys:
        raw = load_yaml(args.keys, what="key mapping") or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.keys}: expected a mapping with info_keys/arrays_keys (or a MACE_SCF "
                             f"`heads:` block), found a {type(raw).__name__}")
        mapping = (KeyMapping.from_mace_scf_config(args.keys) if "heads" in raw
                   else KeyMapping.from_dict(raw, where=args.keys))
    elif args.keys_from:
        mapping = KeyMapping.from_mace_scf_config(args.keys_from)
    else:
        mapping = mapping_for_dataset(settings, where="dataset")
    options = ValidationOptions(**settings.get("validation", {}))
    on_error = args.on_error or settings.get("on_error") or ("reject" if args.index else "raise")
    if args.index:
        index = json_file(args.index, "the index JSON written by `scfdata index`")
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
    for path in dict.fromkeys(r[1] for r in ranges):
        check_readable(path, fmt)
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
