"""`scfdata quality-shard` (one base shard -> its sketch .npz) and `scfdata quality` (the dataset's sketches
-> results/<ds>/quality.npz and flags.tsv, written together). The computation is scfdata/quality/."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from .. import quality
from ..columns import ranges_index
from ..h5io import ScfdataFile, remove_stale_temporaries
from . import json_option

log = logging.getLogger("scfdata.quality")
SKETCH_VERSION = 1
SETTINGS_HELP = ("JSON: {enabled, near_duplicate_tolerance (Å), outlier_sigma, dipole_tolerance, drop} "
                 "(the workflow's `quality:` block)")


def register(sub) -> None:
    p = sub.add_parser("quality-shard", help="quality sketch of one base shard (workflow step)")
    p.add_argument("base", help="the shard's base file (from `scfdata ingest`)")
    p.add_argument("--settings", default="{}", help=SETTINGS_HELP)
    p.add_argument("-o", "--output", required=True, help="sketch .npz")
    p.set_defaults(func=run_shard)

    p = sub.add_parser("quality", help="quality flags of a dataset: quality.npz + flags.tsv (workflow step)")
    p.add_argument("--base", nargs="+", required=True, help="the dataset's base shard files, in shard order")
    p.add_argument("--sketches", nargs="*", default=[],
                   help="their sketches from `scfdata quality-shard`, same order (none with enabled: false)")
    p.add_argument("--settings", default="{}", help=SETTINGS_HELP)
    p.add_argument("-o", "--output", required=True, help="quality .npz (flags_<k>, original_<k> per shard)")
    p.add_argument("--flags", required=True, help="flags .tsv (file, frame, flag, detail)")
    p.set_defaults(func=run_merge)


def _settings(text: str) -> dict:
    return quality.check_settings(json_option(text, "--settings", "the quality settings as a JSON object"))


def _stage(path: str | Path) -> tuple[Path, Path]:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a killed earlier writer's
    return out, out.with_name(f".{out.name}.{os.getpid()}.tmp")


def _field(f: ScfdataFile, name: str):
    return (np.asarray(f.read(name)), np.asarray(f.mask(name))) if f.has(name) else None


def _state(f: ScfdataFile) -> np.ndarray:
    """Per config the total charge and external field (NaN where absent): duplicates must share them."""
    cols = []
    for name, width in (("total_charge", 1), ("external_field", 3)):
        values = np.full((f.n_configs, width), np.nan)
        if f.has(name):
            m = np.asarray(f.mask(name), dtype=bool)
            m = m.any(axis=tuple(range(1, m.ndim)))
            values[m] = np.asarray(f.read(name), dtype=np.float64).reshape(f.n_configs, width)[m]
        cols.append(values)
    return np.hstack(cols)


def run_shard(args) -> int:
    s = _settings(args.settings)
    with ScfdataFile(args.base) as f:
        charges = _field(f, "atomic_multipoles") or _field(f, "charges")
        renorm = None
        if f.exists("configs", "charge_renormalisation"):
            values = np.asarray(f.raw("configs", "charge_renormalisation"), dtype=np.float64)
            mask = (np.asarray(f.raw("masks", "charge_renormalisation"), dtype=bool)
                    if f.exists("masks", "charge_renormalisation") else np.isfinite(values))
            renorm = (values, mask)
        sketch = quality.shard_sketch(
            f.raw("atoms", "numbers"), f.raw("atoms", "positions"), f.atom_ptr, f.raw("configs", "cell"),
            f.raw("configs", "pbc"), tolerance=s["near_duplicate_tolerance"], state=_state(f),
            energy=_field(f, "energy"), forces=_field(f, "forces"), dipole=_field(f, "dipole"), charges=charges,
            renormalisation=renorm)
        sketch["source"] = np.asarray(f.raw("configs", "source"), dtype=np.int64).reshape(-1, 2)
        sketch["inputs"] = np.array([str(i.get("path", "")) for i in f.provenance.get("inputs", [])], dtype=str)
    sketch["version"] = np.array(SKETCH_VERSION)
    out, tmp = _stage(args.output)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **sketch)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: sketch of %d configs", out, len(sketch["n_atoms"]))
    return 0


def _sizes(bases: list[str]) -> list[int]:
    out = []
    for path in bases:
        with ScfdataFile(path) as f:
            out.append(f.n_configs)
    return out


def _loader(sketches: list[str], sizes: list[int]):
    def load(k: int) -> dict:
        rerun = "rerun `scfdata quality-shard` (in the workflow: snakemake --forcerun quality_shard)"
        try:
            with np.load(sketches[k], allow_pickle=False) as z:
                sk = {name: z[name] for name in z.files}
        except (ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ValueError(f"{sketches[k]}: not a readable quality sketch ({e}); {rerun}") from None
        if "version" not in sk or int(sk["version"]) != SKETCH_VERSION:
            raise ValueError(f"{sketches[k]}: not a quality sketch of this scfdata (version {SKETCH_VERSION}); {rerun}")
        if len(sk["n_atoms"]) != sizes[k]:
            raise ValueError(f"{sketches[k]}: sketch of {len(sk['n_atoms'])} configs, its base shard holds "
                             f"{sizes[k]}: {rerun}")
        return sk
    return load


def _gatherer(bases: list[str], offsets: np.ndarray):
    def gather(ids: np.ndarray) -> dict:
        parts = {"numbers": [], "positions": [], "counts": [], "cell": [], "pbc": []}
        shard = np.searchsorted(offsets, ids, "right") - 1
        for k in np.unique(shard):
            local = ids[shard == k] - offsets[k]
            with ScfdataFile(bases[k]) as f:
                a_idx = ranges_index(f.atom_ptr, local)
                parts["numbers"].append(np.asarray(f.raw("atoms", "numbers"))[a_idx])
                parts["positions"].append(np.asarray(f.raw("atoms", "positions"))[a_idx])
                parts["counts"].append(np.diff(f.atom_ptr)[local])
                parts["cell"].append(np.asarray(f.raw("configs", "cell"))[local])
                parts["pbc"].append(np.asarray(f.raw("configs", "pbc"))[local])
        out = {name: np.concatenate(v) for name, v in parts.items()}
        out["ptr"] = np.concatenate([[0], np.cumsum(out.pop("counts"))]).astype(np.int64)
        return out
    return gather


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def run_merge(args) -> int:
    s = _settings(args.settings)
    sizes = _sizes(args.base)
    if s["enabled"] and len(args.sketches) != len(args.base):
        raise ValueError(f"--sketches: {len(args.sketches)} files for {len(args.base)} base shards; give one "
                         "sketch per shard, in shard order (or `enabled: false` in the settings and no sketches)")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if s["enabled"]:
        shards, meta = quality.flag_dataset(len(sizes), _loader(args.sketches, sizes),
                                            _gatherer(args.base, offsets), s)
    else:
        shards = [{"flags": np.zeros(n, np.uint32), "original": np.full(n, -1, np.int64), "rows": []} for n in sizes]
        meta = {"settings": s, "n_configs": int(offsets[-1]), "counts": dict.fromkeys(quality.FLAG_NAMES, 0),
                "thresholds": {}, "e0": {}, "note": "quality.enabled is false: no flag computed"}
    arrays = {"flag_names": np.array(quality.FLAG_NAMES, dtype=str), "meta": np.array(json.dumps(meta, sort_keys=True))}
    for k, sh in enumerate(shards):
        arrays[f"flags_{k}"] = sh["flags"].astype(np.uint32)
        arrays[f"original_{k}"] = sh["original"].astype(np.int64)
    npz, npz_tmp = _stage(args.output)
    tsv, tsv_tmp = _stage(args.flags)
    try:
        with open(npz_tmp, "wb") as fh:
            np.savez(fh, **arrays)
        with open(tsv_tmp, "w") as fh:
            fh.write("file\tframe\tflag\tdetail\n")
            for sh in shards:
                for path, frame, flag, detail in sh["rows"]:
                    fh.write(f"{_clean(path)}\t{frame}\t{flag}\t{_clean(detail)}\n")
        os.replace(tsv_tmp, tsv)
        os.replace(npz_tmp, npz)
    finally:
        npz_tmp.unlink(missing_ok=True)
        tsv_tmp.unlink(missing_ok=True)
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items() if v) or "none"
    log.info("%s, %s: %d configs; flagged: %s", npz, tsv, meta["n_configs"], counts)
    return 0
