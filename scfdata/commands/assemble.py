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
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from ..h5io import MANIFEST, ScfdataFile, assemble, remove_stale_temporaries
from ..ingest import check_keys_found
from ..keys import KeyMapping
from ..provenance import versions
from ..split import SPLIT_NAMES, read_split
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
    n_written = 0
    for k, files in enumerate(shards):
        with ScfdataFile(files[0]) as f:
            prov = f.provenance
            if len(labels[k]) != f.n_configs:
                raise ValueError(f"{files[0]} holds {f.n_configs} configs, {args.split} labels {len(labels[k])} "
                                 "for it: rerun the split (the shards changed)")
            n_written += f.n_configs
            rejects += f.rejects()
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

    _publish(args.dataset, out_dir, shards, labels, provenance, rejects, paths, n_in, n_written)
    return 0


def _reasons(rejects: list[tuple[int, int, str]]) -> dict[str, int]:
    return dict(Counter(_clean(r[2]).split(":")[0] for r in rejects).most_common())


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
             rejects: list, paths: dict, n_in: int, n_written: int) -> None:
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

    written = {}
    try:
        for i, name in enumerate(SPLIT_NAMES):
            rows = [np.flatnonzero(lab == i) for lab in labels]
            keep = [k for k, r in enumerate(rows) if len(r)]
            if not keep:
                continue
            final = out_dir / f"{name}.h5"
            tmp = stage(final)
            assemble(tmp, [shards[k] for k in keep], [rows[k] for k in keep],
                     provenance={**provenance, "split_name": name}, rejects=rejects,
                     root_attrs={"split_id": split_id, "split_name": name}, in_place=True)
            written[name] = {"path": str(final), "n_configs": int(sum(len(rows[k]) for k in keep)),
                             "bytes": tmp.stat().st_size}
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
