"""`scfdata assemble`: shard base files + derived fragments -> results/<ds>/{train,valid,test}.h5.

Writes only the non-empty splits, every rejected frame of the dataset in each file's /rejects and in
``rejects.tsv``, and ``manifest.json`` (what was written: the workflow rule's declared output). Before
writing, the dataset-wide key check: a mapped key found in no frame of any shard is an error naming the
key, with a did-you-mean. Counts reconcile: frames in == configs written + configs rejected, or the
command fails; so does a dataset of which no config is written (with its reject summary).

Publication is all or nothing: every file of the set is written under a temporary name first (each
split file carrying the set's ``split_id``), then the split files are renamed into place, then
``rejects.tsv``, then ``manifest.json`` (naming the ``split_id``) last; split files of the previous set
that the new one does not have are removed after that. A reader refuses a split file whose id is not
the manifest's, so a run stopped at any point (kill, full disk) never leaves two splits readable side by
side; temporaries of a killed run are removed by the next one.

Quality (``--quality results/<ds>/quality.npz``, optional): each split file's provenance and the manifest
carry ``quality`` (the settings, per flag the configs carrying it, per split in the manifest). ``--drop``
(a JSON list of flag names, the config's ``quality.drop``) turns every config carrying one of them into a
reject, one row each, with the reason ``quality: <flag> ...`` (the first of its flags in ``drop`` order;
a duplicate names its first copy as ``file:frame``); ``dropped`` counts them per that flag, so the counts
still reconcile (in = written + rejected).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from ..h5io import MANIFEST, AssemblyOutput, ScfdataFile, assemble_many, remove_stale_temporaries
from ..ingest_errors import check_keys_found
from ..keys import KeyMapping
from ..provenance import versions
from ..split import SPLIT_NAMES, Quality, read_quality, read_split
from . import json_file, json_option

log = logging.getLogger("scfdata.assemble")


def register(sub) -> None:
    p = sub.add_parser("assemble", help="merge shard files into one HDF5 file per split (workflow step)")
    p.add_argument("--dataset", required=True, help="dataset name (recorded in the provenance)")
    p.add_argument("--split", required=True, help="split .npz from `scfdata split`")
    p.add_argument("--index", help="index JSON from `scfdata index` (frame counts; default: from the shards)")
    p.add_argument("--reference", default="{}", help="JSON: the reference settings (recorded in the provenance)")
    p.add_argument("--shard-files", nargs="+", required=True, metavar="BASE[,FRAGMENT...]",
                   help="one argument per shard: its base file, then its fragments, comma-separated")
    p.add_argument("--quality", help="results/<dataset>/quality.npz from the quality step (flag counts, --drop)")
    p.add_argument("--drop", default="[]", help='JSON list of flags whose configs become rejects, e.g. '
                   '\'["duplicate", "energy_outlier"]\' (needs --quality)')
    p.add_argument("-o", "--output", required=True, help="output folder (results/<dataset>)")
    p.set_defaults(func=run)


def _sum_counts(items: list[dict]) -> dict:
    """Merge per-shard notes: numbers add up, except keys starting with "max" (the maximum);
    nested dicts merge the same way; anything else is taken from the first shard."""
    out: dict = {}
    for d in items:
        for k, v in d.items():
            if k not in out:
                out[k] = _sum_counts([v]) if isinstance(v, dict) else v
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = _sum_counts([out[k], v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out[k], (int, float)):
                out[k] = max(out[k], v) if str(k).startswith("max") else out[k] + v
    return out


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _drop_list(text: str, quality: str | None) -> list[str]:
    try:
        drop = json.loads(text)
    except json.JSONDecodeError:
        drop = None
    if not isinstance(drop, list) or not all(isinstance(d, str) for d in drop):
        raise ValueError(f"--drop: expected a JSON list of flag names, e.g. '[\"duplicate\"]', got {text[:80]!r}")
    if drop and not quality:
        raise ValueError(f"--drop {text}: needs --quality results/<dataset>/quality.npz (the flags to drop by)")
    return list(dict.fromkeys(drop))


class _Dropped:
    """The configs that ``drop`` turns into rejects: per shard which to keep, the reject rows, and per
    flag how many (each dropped config counted once, under the first of its flags in ``drop`` order)."""

    def __init__(self, quality: Quality, drop: list[str], sources: list[np.ndarray], paths: dict):
        mask = quality.mask_of(drop, "--drop")
        self.keep = [(f & np.uint32(mask)) == 0 for f in quality.flags]
        self.counts = dict.fromkeys(drop, 0)
        self.rejects: list[tuple[int, int, str]] = []
        if not mask:
            return
        flags, original = np.concatenate(quality.flags), np.concatenate(quality.original)
        source = np.concatenate(sources).reshape(-1, 2)
        gone = np.flatnonzero(~np.concatenate(self.keep))
        bits = {name: 1 << quality.flag_names.index(name) for name in drop if name in quality.flag_names}
        first = np.full(len(gone), "", dtype=object)
        for name, bit in reversed(bits.items()):  # the first in drop order wins
            first[(flags[gone] & bit) != 0] = name
        self.counts.update(Counter(first.tolist()))
        for i, name in zip(gone.tolist(), first.tolist()):
            text = f"quality: {name}"
            if name in ("duplicate", "near_duplicate") and original[i] >= 0:
                f_i, fr = source[original[i]].tolist()
                text += f" of {paths.get(f_i, f_i)}:{fr}"
            also = [n for n, bit in bits.items() if n != name and flags[i] & bit]
            text += f" (also {', '.join(also)}; dropped by quality.drop)" if also else " (dropped by quality.drop)"
            self.rejects.append((int(source[i, 0]), int(source[i, 1]), text))


def run(args) -> int:
    shards = [s.split(",") for s in args.shard_files]
    reference = json_option(args.reference, "--reference", "a JSON object of the reference settings")
    labels, split_meta = read_split(args.split)
    if len(labels) != len(shards):
        raise ValueError(f"{args.split} has labels for {len(labels)} shards, --shard-files gives {len(shards)}")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- per-shard provenance, rejects, counts --
    coverage: Counter = Counter()
    keys_seen: set[str] = set()
    rejects: list[tuple[int, int, str]] = []
    base_prov: dict = {}
    derive_prov: dict[str, list[dict]] = {}
    sources: list[np.ndarray] = []
    n_written = 0
    drop = _drop_list(args.drop, args.quality)
    for k, files in enumerate(shards):
        with ScfdataFile(files[0]) as f:
            prov = f.provenance
            if len(labels[k]) != f.n_configs:
                raise ValueError(f"{files[0]} holds {f.n_configs} configs, {args.split} labels {len(labels[k])} "
                                 "for it: rerun the split (the shards changed)")
            n_written += f.n_configs
            rejects += f.rejects()
            sources.append(np.asarray(f.raw("configs", "source")) if f.n_configs else np.zeros((0, 2), np.int64))
        base_prov = base_prov or prov
        ing = prov.get("ingest", {})
        coverage.update(ing.get("coverage", {}))
        keys_seen |= set(ing.get("keys_seen", []))
        for path in files[1:]:
            with ScfdataFile(path) as f:
                derive_prov.setdefault(Path(path).stem, []).append(f.provenance)
    mapping = KeyMapping.from_dict(base_prov.get("key_mapping"), where=f"dataset {args.dataset} key mapping")
    check_keys_found(dict(coverage), keys_seen, mapping, where=f"dataset {args.dataset}")

    inputs = base_prov.get("inputs", [])
    if args.index:
        inputs = json_file(args.index, "the index JSON written by `scfdata index`").get("inputs", [])
    n_in = sum(int(i.get("n_frames", 0)) for i in inputs)
    rejects.sort(key=lambda r: (r[0], r[1]))
    if args.index and n_in != n_written + len(rejects):
        raise ValueError(
            f"dataset {args.dataset}: counts do not reconcile: {args.index} counts {n_in} frames in the inputs, "
            f"the shards hold {n_written} configs written + {len(rejects)} rejected "
            f"({n_in - n_written - len(rejects):+d} unaccounted for): the ingest logs (logs/ingest/) say which shard "
            "read fewer frames than its index plan; if the inputs changed since they were indexed, rerun with "
            "--forceall"
        )
    paths = {k: i.get("path", str(k)) for k, i in enumerate(inputs)}
    quality = None
    if args.quality:
        quality = read_quality(args.quality, [len(lab) for lab in labels], [files[0] for files in shards])
        dropped = _Dropped(quality, drop, sources, paths)
        labels = [np.where(keep, lab, -1).astype(np.int8) for lab, keep in zip(labels, dropped.keep)]
        if n_apart := quality.straddling(labels):
            log.warning("assemble: %d duplicate(s) of %s sit in another split than their first copy: %s was made "
                        "without it; rerun `scfdata split ... --quality %s`", n_apart, args.quality, args.split,
                        args.quality)
        rejects = sorted(rejects + dropped.rejects, key=lambda r: (r[0], r[1]))
        n_written -= len(dropped.rejects)
    if n_written == 0:
        raise ValueError(_nothing_written(args.dataset, n_in, rejects, paths))

    provenance = {
        "dataset": args.dataset,
        "inputs": inputs,
        "key_mapping": base_prov.get("key_mapping"),
        "validation": base_prov.get("validation"),
        "on_error": base_prov.get("on_error"),
        "reference": reference,
        # settings are the same in every shard; only the per-reason counts of masked configs add up
        "derive": {name: {**{kk: vv for kk, vv in provs[0].items()
                             if kk not in ("inputs", "versions", "notes", "masked")},
                          "masked": _sum_counts([p.get("masked", {}) for p in provs]),
                          "notes": _sum_counts([p.get("notes", {}) for p in provs])}
                   for name, provs in derive_prov.items()},
        "split": split_meta.get("settings"),
        "ingest": {"coverage": dict(coverage), "configs_in": n_in, "written": n_written,
                   "rejected": len(rejects)},
        "versions": versions(),
    }

    if quality is not None:
        provenance["quality"] = {"settings": {**quality.settings, "drop": drop},
                                 "dropped": dropped.counts}
    _publish(args.dataset, out_dir, shards, labels, provenance, rejects, paths, n_in, n_written, quality)
    return 0


def _quality_counts(quality: Quality, labels: list, name_index: int) -> dict:
    """Flag counts of the configs labelled ``name_index`` (dropped configs are labelled -1)."""
    flags = np.concatenate([f[lab == name_index] for f, lab in zip(quality.flags, labels)])
    return {"flags": quality.counts(flags), "flagged": int((flags != 0).sum())}


def _reason_kind(reason: str) -> str:
    """The text before the first colon; for a quality reject ``quality: <flag>``."""
    head, _, rest = _clean(reason).partition(":")
    return f"quality: {rest.split()[0]}" if head == "quality" and rest.split() else head


def _reasons(rejects: list[tuple[int, int, str]]) -> dict[str, int]:
    return dict(Counter(_reason_kind(r[2]) for r in rejects).most_common())


def _nothing_written(dataset: str, n_in: int, rejects: list, paths: dict) -> str:
    """One line: a dataset of which every frame was rejected, with the reasons and counts."""
    counts = ", ".join(f"{reason}: {n}" for reason, n in _reasons(rejects).items()) or "no rejects recorded"
    first = ""
    if rejects:
        f, frame, reason = rejects[0]
        first = f"; e.g. {paths.get(f, f)} frame {frame}: {_clean(reason)[:200]}"
    return (f"dataset {dataset}: no config written: {len(rejects)} of {n_in} frames rejected ({counts}){first}; "
            "fix the inputs, the key mapping or the validation settings (every rejected frame and its reason "
            "are in the ingest logs)")


def _publish(dataset: str, out_dir: Path, shards: list, labels: list, provenance: dict,
             rejects: list, paths: dict, n_in: int, n_written: int, quality: Quality | None = None) -> None:
    """Write the set under temporary names, then rename: split files, rejects.tsv, manifest.json last."""
    split_id = uuid.uuid4().hex
    finals = [out_dir / f"{name}.h5" for name in SPLIT_NAMES] + [out_dir / "rejects.tsv", out_dir / MANIFEST]
    for final in finals:
        for q in remove_stale_temporaries(final):
            log.info("removed %s (a temporary of a run that stopped)", q)
    staged: list[tuple[Path, Path]] = []

    def stage(final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        staged.append((tmp, final))
        return tmp

    written: dict = {}
    by_split: dict = {}
    try:
        outputs = []  # every non-empty split, written in one pass over the shards
        for i, name in enumerate(SPLIT_NAMES):
            rows = [np.flatnonzero(lab == i) for lab in labels]
            parts = [(k, r) for k, r in enumerate(rows) if len(r)]
            if not parts:
                continue
            final = out_dir / f"{name}.h5"
            prov = {**provenance, "split_name": name}
            if quality is not None:
                counts = _quality_counts(quality, labels, i)
                by_split[name] = counts["flags"]
                prov["quality"] = {**prov["quality"], **counts}
            outputs.append(AssemblyOutput(stage(final), parts, prov, {"split_id": split_id, "split_name": name}))
            written[name] = {"path": str(final), "n_configs": int(sum(len(r) for _, r in parts))}
        assemble_many(outputs, shards, rejects=rejects, in_place=True)
        for out, entry in zip(outputs, written.values(), strict=True):
            entry["bytes"] = out.path.stat().st_size
        tsv = out_dir / "rejects.tsv"
        with open(stage(tsv), "w") as fh:
            fh.write("file\tframe\treason\n")
            for file_index, frame, reason in rejects:
                fh.write(f"{paths.get(file_index, file_index)}\t{frame}\t{_clean(reason)}\n")
        manifest = {
            "dataset": dataset,
            "split_id": split_id,
            "configs_in": n_in,
            "written": n_written,
            "rejected": len(rejects),
            "splits": written,
            "rejects": str(tsv),
            "reject_reasons": _reasons(rejects),
        }
        if quality is not None:
            total = _quality_counts(quality, [np.where(lab >= 0, 0, -1) for lab in labels], 0)
            manifest["quality"] = {**total, "dropped": provenance["quality"]["dropped"], "by_split": by_split}
        stage(out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        for tmp, final in staged:  # the manifest is staged last, so it is renamed last
            os.replace(tmp, final)
    except OSError as e:
        raise ValueError(
            f"dataset {dataset}: writing {out_dir} failed "
            f"({e.strerror or e}{': ' + e.filename if e.filename else ''}); "
            "nothing of this run was published (the previous set, if any, is unchanged): free disk space or raise "
            "the file size limit, then rerun"
        ) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for name in SPLIT_NAMES:
        stale = out_dir / f"{name}.h5"
        if name not in written and stale.exists():
            stale.unlink()
            log.info("removed %s of the previous set (the split is empty now)", stale)
    split_text = ", ".join(f"{k} {v['n_configs']}" for k, v in written.items()) or "nothing written"
    print(f"dataset {dataset}: configs in {n_in} / written {n_written} / rejected {len(rejects)} "
          f"({split_text})", flush=True)
