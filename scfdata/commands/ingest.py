"""`scfdata index` (count frames, plan shards) and `scfdata ingest` (frames -> scfdata HDF5).

Both refuse, before reading any frame, an input that is not a distinct regular file, an output that is an
input or a directory, an empty input file and a file whose ase.io format is unknown (with the fix:
``--format`` here, ``format:`` in the workflow's dataset block). ``index`` also refuses an input in which it
counts no frame, so the workflow never writes an empty dataset, and, given ``--settings``, a mapped key
that no frame header carries (a typo, with a did-you-mean), before any ingest job. It records every
per-atom key's column counts; ingest takes the dataset's multipole width from there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..ingest import PARSERS, IngestError, check_input_file, check_keys_found, ingest, is_extxyz, sha256
from ..keys import KeyMapping, load_yaml, mapping_for_dataset
from ..shards import index_input, plan_shards
from ..validate import ValidationOptions
from . import json_file, json_option

if TYPE_CHECKING:
    from ..h5io import StreamWriter

log = logging.getLogger("scfdata.ingest")


_PARSER_HELP = ("extxyz parser: auto/extxyz (libextxyz's C parser; frames it cannot vouch for go through ASE) or "
                "ase (ASE's reader for every frame); both store the same values")


def register(sub) -> None:
    p = sub.add_parser("index", help="count the frames of the inputs and plan the shards (workflow step)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--format", default=None, help="ase.io format (default: from the file name)")
    p.add_argument("--settings", help="JSON: the dataset block given to `scfdata ingest` (its key mapping is "
                   "checked against the frame headers)")
    p.add_argument("--parser", choices=PARSERS, default="auto", help=_PARSER_HELP)
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
    p.add_argument("--parser", choices=PARSERS, default="auto", help=_PARSER_HELP)
    p.set_defaults(func=run_ingest)


_FORMAT_FIX = ("give the format: `--format NAME` on the command line, or `format: NAME` in the dataset's "
               "block of the workflow config (NAME: an ase.io format, e.g. extxyz, vasp-out, aims-output; "
               "see `ase info --formats`)")


def check_readable(path: str | Path, fmt: str | None) -> None:
    """Refuse an empty file and a format ase.io cannot read (unknown name or file type), naming the file.
    A missing file is left to the reader (which names it). extxyz is read by scfdata's own framing (ase.io is
    not imported for it)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_input_file(path)
    if path.stat().st_size == 0:
        raise IngestError(f"no frames in {path}: the file is empty; remove it from the inputs or regenerate it")
    if is_extxyz(path, fmt):
        return
    from ase.io.formats import UnknownFileTypeError, filetype, get_ioformat

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


def check_paths(inputs: list[str], output: str) -> None:
    """Inputs distinct regular files; the output not an input, not a directory, in a writable directory."""
    seen: dict[str, str] = {}
    for p in inputs:
        check_input_file(p)
        real = os.path.realpath(p)
        if real in seen:
            raise IngestError(f"{p}: the same input file is listed twice (also as {seen[real]}); list it once")
        seen[real] = p
    out = Path(output)
    if os.path.realpath(out) in seen:
        raise IngestError(f"-o {output}: the output is one of the inputs ({seen[os.path.realpath(out)]}); "
                          "give another output path")
    if out.is_dir():
        raise IngestError(f"-o {output}: is a directory; give a file path")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IngestError(f"-o {output}: cannot create the directory {parent} ({e.strerror}); give another "
                          "output path") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IngestError(f"-o {output}: the directory {parent} is not writable; give another output path")


def remove_stale_temporaries(output: str | Path, own: bool = False) -> list[Path]:
    """Scratch and temporary files (``.<name>.<pid>.scratch|tmp``) of killed runs writing ``output``
    (``own``: this process's too)."""
    out = Path(output)
    removed = []
    for tmp in out.parent.glob(f".{out.name}.*"):
        pid = tmp.name[len(out.name) + 2:].rsplit(".", 1)
        if len(pid) != 2 or pid[1] not in ("scratch", "tmp") or not pid[0].isdigit():
            continue
        try:
            if not (own and int(pid[0]) == os.getpid()):
                os.kill(int(pid[0]), 0)
                continue  # a live process still writes it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d leftover temporary file(s): %s", len(removed), ", ".join(map(str, removed)))
    return removed


def _settings_mapping(args) -> tuple[dict, KeyMapping | None]:
    settings = json_option(args.settings, "--settings", "a JSON object of the dataset's settings") \
        if args.settings else {}
    if getattr(args, "keys", None):
        raw = load_yaml(args.keys, what="key mapping") or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.keys}: expected a mapping with info_keys/arrays_keys (or a MACE_SCF "
                             f"`heads:` block), found a {type(raw).__name__}")
        return settings, (KeyMapping.from_mace_scf_config(args.keys) if "heads" in raw
                          else KeyMapping.from_dict(raw, where=args.keys))
    if getattr(args, "keys_from", None):
        return settings, KeyMapping.from_mace_scf_config(args.keys_from)
    if settings.get("keys") or settings.get("keys_from"):
        return settings, mapping_for_dataset(settings, where="dataset")
    return settings, None


def run_index(args) -> int:
    check_paths(args.inputs, args.output)
    settings, mapping = _settings_mapping(args)
    for p in args.inputs:
        check_readable(p, args.format)
    inputs = []
    for p in args.inputs:
        entry = index_input(p, args.format, parser=args.parser)
        if entry["n_frames"] == 0:
            raise IngestError(f"no frames in {p}: 0 frames counted (format "
                              f"{args.format or 'from the file name'}); remove it from the inputs, regenerate "
                              "it, or check `--format` (the dataset's `format:`)")
        inputs.append(entry)
    keys = set().union(*(i["keys"] for i in inputs))
    if mapping is not None:
        check_keys_found({}, keys, mapping, where=f"{', '.join(args.inputs)} (frame headers)")
    widths = {}
    for i in inputs:
        for key, firsts in i["first_frames"].items():
            w, frame = min(firsts.items(), key=lambda item: item[1])
            widths.setdefault(key, {"width": int(w), "file": i["path"], "frame": frame})
    plan = plan_shards([i["n_frames"] for i in inputs], args.shards)
    _write_atomic(args.output, json.dumps({"inputs": inputs, "shards": plan, "format": args.format,
                                           "widths": widths}, indent=1))
    log.info("indexed %d frames in %d files into %d shards", sum(i["n_frames"] for i in inputs),
             len(inputs), len(plan))
    return 0


class _CStderr:
    """Runs HDF5 writes with the C-level stderr captured: after a failed write (full disk, ulimit -f) HDF5
    prints tracebacks from its destructors; those are dropped (the CLI reports the cause in one line),
    anything printed by a write that succeeds is passed on."""

    def __init__(self):
        self.failed = False

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.buf = tempfile.TemporaryFile()
        os.dup2(self.buf.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if exc_type is None and not self.failed:
            self.buf.seek(0)
            text = self.buf.read()
            if text:
                sys.stderr.write(text.decode(errors="replace"))
        self.buf.close()
        return False


class _GuardedWriter:
    """A StreamWriter whose appends, close and abort run under :class:`_CStderr`; abort also removes the
    scratch file when HDF5 cannot close it."""

    def __init__(self, writer: StreamWriter, output: str):
        self.writer, self.output = writer, output
        self.provenance = writer.provenance

    def append(self, cols) -> None:
        with _CStderr():
            self.writer.append(cols)

    def add_rejects(self, rows) -> None:
        self.writer.add_rejects(rows)

    def close(self):
        with _CStderr():
            return self.writer.close()

    def abort(self) -> None:
        with _CStderr() as quiet:
            quiet.failed = True
            try:
                self.writer.abort()
            except Exception:
                pass
        remove_stale_temporaries(self.output, own=True)


def _write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _multipole_width(index: dict, mapping: KeyMapping) -> tuple[int, str] | None:
    """The dataset's multipole column count from the index: that of the first frame (in input order) whose
    header gives the mapped key a valid width (1, 4, 9, ...)."""
    key = mapping.arrays_keys.get("atomic_multipoles") or mapping.info_keys.get("atomic_multipoles")
    for i in index.get("inputs", []):
        valid = [(frame, int(w)) for w, frame in (i.get("first_frames") or {}).get(key, {}).items()
                 if int(w) > 0 and math.isqrt(int(w)) ** 2 == int(w)]
        if valid:
            frame, w = min(valid)
            return w, f"the dataset's width (set by the first frame with {key!r}: {i['path']} frame {frame}) is"
    return None


def _seek(entry: dict, start: int) -> tuple[int, int, int] | None:
    """(frame, byte offset, line) of the index's last checkpoint at or before frame ``start`` of one input."""
    best = None
    for frame, offset, line in entry.get("checkpoints", []):
        if frame <= start and (best is None or frame > best[0]):
            best = (frame, offset, line)
    return best


def _when(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime_ns / 1e9)) + f".{mtime_ns % 10**9:09d} UTC"


def check_unchanged(entry: dict, index_path: str) -> None:
    """An input must be the file the index read (its size and modification time as recorded there): the
    checkpoints are byte offsets into it, so a shard job on a changed file would read the wrong frames.
    An index that recorded neither (written before they were) is taken as it is."""
    if "size" not in entry and "mtime_ns" not in entry:
        return
    path = entry["path"]
    check_input_file(path)
    st = os.stat(path)
    expected = (entry.get("size", st.st_size), entry.get("mtime_ns", st.st_mtime_ns))
    if (st.st_size, st.st_mtime_ns) != expected:
        raise IngestError(
            f"{path}: changed since `scfdata index` wrote {index_path}: indexed {expected[0]} bytes modified "
            f"{_when(expected[1])}, found {st.st_size} bytes modified {_when(st.st_mtime_ns)}; rerun "
            "`scfdata index` on it (in the workflow: delete the index.json or run with --forcerun index)")


def run_ingest(args) -> int:
    from ..h5io import StreamWriter  # noqa: PLC0415 (h5py and the package metadata: not for `scfdata index`)
    from ..provenance import versions  # noqa: PLC0415

    settings, mapping = _settings_mapping(args)
    if mapping is None:
        mapping = mapping_for_dataset(settings, where="dataset")
    options = ValidationOptions.from_dict(settings.get("validation"), where="--settings: validation")
    on_error = args.on_error or settings.get("on_error") or ("reject" if args.index else "raise")
    if args.index:
        index = json_file(args.index, "the index JSON written by `scfdata index`")
        if args.shard is None or not 0 <= args.shard < len(index["shards"]):
            raise ValueError(f"--shard must be in 0..{len(index['shards']) - 1}, got {args.shard}")
        inputs = index["inputs"]
        ranges = [(f, inputs[f]["path"], a, b, _seek(inputs[f], a)) for f, a, b in index["shards"][args.shard]]
        fmt = index.get("format")
        check_paths([i["path"] for i in inputs], args.output)
        for f in dict.fromkeys(r[0] for r in ranges):
            check_unchanged(inputs[f], args.index)
        width = _multipole_width(index, mapping)
        inputs = [{k: i[k] for k in ("path", "sha256", "n_frames") if k in i} for i in inputs]
    else:
        if not args.inputs:
            raise ValueError("give input files, or --index and --shard")
        check_paths(args.inputs, args.output)
        inputs = [{"path": str(p), "sha256": sha256(p)} for p in args.inputs]
        ranges = [(f, p, 0, None) for f, p in enumerate(args.inputs)]
        fmt = args.format
        width = None
    for path in dict.fromkeys(r[1] for r in ranges):
        check_readable(path, fmt)
    provenance = {
        "inputs": inputs,
        "key_mapping": mapping.as_dict(),
        "validation": options.__dict__,
        "on_error": on_error,
        "versions": versions(),
    }
    remove_stale_temporaries(args.output)
    writer = _GuardedWriter(StreamWriter(args.output, provenance=provenance), args.output)
    t0 = time.perf_counter()
    last = [t0]

    def progress(n):
        now = time.perf_counter()
        if now - last[0] > 5:
            log.info("%s: %d frames read (%.0f/s)", args.output, n, n / (now - t0))
            last[0] = now

    try:
        result = ingest(writer, ranges, mapping, on_error=on_error, options=options, fmt=fmt,
                        progress=progress, multipole_width=width, parser=args.parser)
        if args.index is None and result.keys_seen:  # (no frame parsed: the rejects say why)
            check_keys_found(result.coverage, result.keys_seen, mapping, where=", ".join(args.inputs))
    except BaseException:
        writer.abort()
        raise
    writer.provenance["ingest"] = {"coverage": result.coverage, "keys_seen": sorted(result.keys_seen),
                                   "notes": result.notes}
    writer.close()
    log.info("%s: read %d, written %d, rejected %d (%.1f s)", args.output, result.n_read, result.n_written,
             len(result.rejects), time.perf_counter() - t0)
    for kind, count in result.notes.items():
        log.warning("%s: %d config(s) kept with the warning %r (each named above)", args.output, count, kind)
    return 0
