# Config validation and the helpers every rule uses. Rules stay thin shell calls into the `scfdata` CLI.
import copy
import json
import os
import re
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from scfdata import quality as quality_flags
from scfdata import targets


# Snakemake merges a user's --configfile (and --config) INTO config/config.yaml. The bundled example's
# datasets must not leak into a user's run: when the command line gives `datasets`, they replace the
# bundled ones; every other key (reference settings) still merges over the defaults.
_cli_config = workflow.config_settings.overwrite_config
if isinstance(_cli_config, dict) and "datasets" in _cli_config:
    config["datasets"] = copy.deepcopy(_cli_config["datasets"])



def _schema_error(err):
    """One line naming the config key, what the schema expected, and (for a typo) the closest key."""
    import difflib

    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, allowed, n=1)) else repr(k)
                 for k in extra]
        return (f"config: {where}: unknown key {', '.join(hints)}; allowed keys here: "
                f"{', '.join(allowed)}")
    return f"config: {where}: {err.message}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _no_duplicate_keys(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise WorkflowError(
                f"config: {node.start_mark.name} line {key_node.start_mark.line + 1}: key {key!r} is given twice "
                f"in one mapping (first at line {seen[key] + 1}; YAML would keep only the last): rename or remove one"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _check_config_files():
    """Duplicate keys (e.g. two datasets of one name) in config/config.yaml and every --configfile."""
    files = [os.path.join(workflow.basedir, "config", "config.yaml"), *workflow.config_settings.configfiles]
    for path in files:
        if os.path.isfile(path):
            with open(path) as fh:
                yaml.load(fh, Loader=_UniqueKeyLoader)


def _schema(schema_path):
    """The config schema of workflows/schemas with the `reference` blocks from the target registry."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    schema["properties"]["reference"] = targets.reference_schema(with_defaults=True)
    schema["$defs"]["dataset"]["properties"]["reference"] = targets.reference_schema(with_defaults=False)
    return schema


def _check_schema(schema):
    """Validate without defaults first, for a one-line error; then snakemake's validate fills defaults."""
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if err is not None:
        raise WorkflowError(_schema_error(err) + " (schema: workflows/schemas/config.schema.yaml and "
                            "scfdata/targets.py)")


_check_config_files()
_check_schema(_schema(os.path.join(workflow.basedir, "workflows/schemas/config.schema.yaml")))
validate(config, "../schemas/config.schema.yaml")


# Sharding: `shards:` in the config, or `--set-scatter shard=N` on the command line (which wins).
# One shard = one job per shard-level rule; every dataset is cut into this many shards.
scattergather:
    shard=config["shards"],

_MAX_SHARDS = 100000  # the schema's bound on `shards`, also for --set-scatter
if not 1 <= int(workflow._scatter.get("shard", 1)) <= _MAX_SHARDS:
    raise WorkflowError(f"config: --set-scatter shard={workflow._scatter['shard']}: expected 1 to {_MAX_SHARDS} "
                        "shards per dataset (aim for about 5,000 configs per shard)")

DATASETS = list(config["datasets"])
#: per dataset: every target's settings (defaults < reference.<t> < datasets.<ds>.reference.<t>)
REFERENCE = {ds: targets.merged_reference(config["reference"], config["datasets"][ds].get("reference"))
             for ds in DATASETS}


def _plan_datasets():
    """Per dataset: (targets derived, {skipped target: reason}), from what its keys map."""
    from scfdata.keys import mapping_for_dataset

    out = {}
    for name, ds in config["datasets"].items():
        where = f"datasets.{name}"
        try:
            MAPPED[name] = sorted({n for n, _, _ in mapping_for_dataset(ds, where=where).items()})
            out[name] = targets.plan(REFERENCE[name], set(MAPPED[name]), where)
        except ValueError as e:
            raise WorkflowError(f"config: {e}") from None
    return out


def _check_datasets():
    """What JSON Schema cannot say about a dataset block, checked before any job runs."""
    for name, ds in config["datasets"].items():
        where = f"datasets.{name}"
        missing = [p for p in ds["inputs"] if not os.path.isfile(p)]
        if missing:
            raise WorkflowError(
                f"config: {where}.inputs: file not found: {', '.join(missing)} "
                f"(paths are relative to the working directory {os.getcwd()})"
            )
        real = [os.path.realpath(p) for p in ds["inputs"]]
        twice = sorted({p for p, r in zip(ds["inputs"], real) if real.count(r) > 1})
        if twice:
            raise WorkflowError(f"config: {where}.inputs: {twice[0]} is listed twice (every frame would be "
                                "in the dataset twice): list each file once")
        if bool(ds.get("keys")) == bool(ds.get("keys_from")):
            raise WorkflowError(f"config: {where}: give exactly one of `keys` or `keys_from`")
        if ds.get("keys_from") and not os.path.isfile(ds["keys_from"]):
            raise WorkflowError(f"config: {where}.keys_from: file not found: {ds['keys_from']}")
        split = ds.get("split") or {}
        if split.get("valid_fraction", 0) + split.get("test_fraction", 0) > 1:
            raise WorkflowError(f"config: {where}.split: valid_fraction + test_fraction must be <= 1")


def _check_target_settings():
    """Each target's settings as its engine checks them (every target not switched off, derived for a
    dataset or not: a bad setting is a bad config), and the packages a derived target's preset imports."""
    for ds in DATASETS:
        for t in targets.TARGETS:
            if REFERENCE[ds][t].get("enabled") is False:
                continue
            settings = targets.settings_of(t, REFERENCE[ds])
            block = f"datasets.{ds}: reference.{t}" if config["datasets"][ds].get("reference") else f"reference.{t}"
            try:
                targets.check_settings(t, settings)
            except ValueError as e:
                raise WorkflowError(f"config: {e}" + ("" if str(e).startswith("reference") else f" ({block})")) \
                    from None
            missing = targets.missing_modules(t, settings) if t in derived(ds) else []
            if missing:
                raise WorkflowError(
                    f"config: {block}: preset: {settings.get('preset')} (dataset {ds}) needs "
                    f"{' and '.join(missing)}, which cannot be imported in this environment: install it with "
                    f"{targets.install_hint(t, settings)}, or remove `preset`"
                )


def derived(ds):
    """The targets derived for dataset ds, in dependency order."""
    return PLAN[ds][0]


def _check_quality():
    """The `quality:` block as `scfdata quality` checks it (e.g. a flag name in `drop`), before any job."""
    try:
        return quality_flags.check_settings(config.get("quality"))
    except ValueError as e:
        raise WorkflowError(f"config: {e}") from None


_check_datasets()
#: the quality settings with their defaults (one block for every dataset)
QUALITY = _check_quality()
MAPPED = {}  # per dataset: the canonical names its keys map
PLAN = _plan_datasets()
_check_target_settings()


# One thread per job (shard rules are single-threaded by design: parallelism comes from the shards).
shell.prefix("set -euo pipefail; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1; ")

wildcard_constraints:
    ds="|".join(re.escape(d) for d in DATASETS) or "no-dataset",


# --------------------------------------------------------------------------------------------------
# the command: every job runs the scfdata of the interpreter that runs Snakemake (the one that imported
# scfdata above), never whatever `scfdata` comes first on PATH: another environment's copy would write data
# with other code, and a version manager's shim (pyenv's costs ~0.06 s) would be paid by every job. Its
# console script when it sits beside the interpreter, else the interpreter itself (`python -m scfdata.cli`:
# scfdata imported from PYTHONPATH, a source tree, a user install).
# --------------------------------------------------------------------------------------------------
_OWN_SCFDATA = os.path.join(os.path.dirname(sys.executable), "scfdata")
SCFDATA = shlex.quote(_OWN_SCFDATA) if os.access(_OWN_SCFDATA, os.X_OK) else \
    f"{shlex.quote(sys.executable)} -m scfdata.cli"


# --------------------------------------------------------------------------------------------------
# scheduling: when more jobs are ready than there are cores, Snakemake starts the highest priority first.
# The dataset-level chain index -> ingest -> quality sketches -> quality -> split -> statistics is what the
# report waits for, while the derive jobs only feed assemble; running the chain first keeps both cores busy
# to the end instead of leaving the chain's serial jobs alone on one core after every derive job is done.
# --------------------------------------------------------------------------------------------------
INDEX_PRIORITY = 100
QUALITY_PRIORITY = 20  # quality_shard, quality, split
INGEST_PRIORITY = 15
STATISTICS_PRIORITY = 10  # statistics_shard, statistics
# derive_* and everything else: Snakemake's default priority 0


# --------------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------------
SHARD = "results/{ds}/shards/{scatteritem}"


def shard_file(name, ext="h5"):
    """Pattern of one shard's file: base (ingested), a derived target's fragment, statistics sums."""
    return f"{SHARD}/{name}.{ext}"


def log_file(rule_name, item=None):
    return os.path.join("results", "{ds}", "logs", rule_name, f"{item}.log") if item else \
        os.path.join("results", "{ds}", "logs", f"{rule_name}.log")


def bench_file(rule_name, item=None):
    return os.path.join("results", "{ds}", "benchmarks", rule_name, f"{item}.tsv") if item else \
        os.path.join("results", "{ds}", "benchmarks", f"{rule_name}.tsv")


def n_shards():
    return len(gather.shard("{scatteritem}"))


def shard_index(wildcards):
    """0-based shard number of a scatteritem `k-of-n`."""
    return int(wildcards.scatteritem.split("-of-")[0]) - 1


def gathered(name, ds, ext="h5"):
    """Every shard's file `name` of dataset ds, in shard order."""
    return gather.shard(shard_file(name, ext).replace("{ds}", ds))


def fragments(ds):
    """Files per shard of dataset ds that assemble merges: base first, then every derived target."""
    return ["base"] + derived(ds)


def assemble_shard_files(wildcards):
    """One argument per shard for `scfdata assemble --shard-files`: base,fragment,... comma-separated."""
    per_shard = [gathered(name, wildcards.ds) for name in fragments(wildcards.ds)]
    return [",".join(files) for files in zip(*per_shard)]


# --------------------------------------------------------------------------------------------------
# settings passed to the CLI (as params: a change reruns only the rules that read them)
# --------------------------------------------------------------------------------------------------
def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset(wildcards):
    return config["datasets"][wildcards.ds]


def format_option(wildcards):
    fmt = dataset(wildcards).get("format")
    return f"--format {shlex.quote(fmt)}" if fmt else ""


def ingest_settings(wildcards):
    ds = dataset(wildcards)
    keep = ("keys", "keys_from", "validation", "on_error")
    return _json({k: ds[k] for k in keep if ds.get(k) is not None})


def target_settings(target):
    """params function: the settings of `target` for the job's dataset (a change reruns only its jobs)."""
    return lambda wildcards: _json(targets.settings_of(target, REFERENCE[wildcards.ds]))


def split_settings(wildcards):
    split = dataset(wildcards).get("split")
    if split is None:
        return _json({"valid_fraction": 0.0, "test_fraction": 0.0, "seed": 0, "by": "random"})
    return _json(split)


def split_by_molecules(wildcards):
    split = dataset(wildcards).get("split") or {}
    return split.get("by") == "composition" and "molecules" in derived(wildcards.ds)


def warm_up_datasets(target, ds):
    """JSON for `scfdata warm-up`: the dataset's settings of the target and the names its keys map."""
    return _json([{"settings": targets.settings_of(target, REFERENCE[ds]), "mapped": MAPPED[ds]}])


def reference_settings(wildcards):
    """The dataset's reference settings for its provenance: per target its settings and either
    `derived: true` or `derived: false` with `skipped` (the reason: report.md and `scfdata inspect` show it)."""
    ds = wildcards.ds
    out = {}
    for t in targets.TARGETS:
        out[t] = {**REFERENCE[ds][t], "derived": t in derived(ds)}
        if t in PLAN[ds][1]:
            out[t]["skipped"] = PLAN[ds][1][t]
    return _json(out)


def _supplied_e0(ds):
    """The dataset's isolated-atom energies {symbol: eV} (`datasets.<ds>.statistics.e0`, else the global
    `statistics.e0`; a mapping or a JSON file holding one), checked now; None when neither gives any."""
    from scfdata.statistics import parse_e0

    own = (config["datasets"][ds].get("statistics") or {}).get("e0")
    where, value = (f"datasets.{ds}.statistics.e0", own) if own is not None else \
        ("statistics.e0", (config.get("statistics") or {}).get("e0"))
    if value is None:
        return None
    if isinstance(value, str):
        try:
            with open(value) as fh:
                value = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WorkflowError(f"config: {where}: {value}: cannot read a JSON object of E0s in eV ({e}); "
                                'expected e.g. {"H": -13.6, "O": -2041.8} (paths are relative to the working '
                                f"directory {os.getcwd()})") from None
        if not isinstance(value, dict):
            raise WorkflowError(f"config: {where}: the file holds a JSON {type(value).__name__}; expected an "
                                'object of E0s in eV, e.g. {"H": -13.6, "O": -2041.8}')
    try:
        e0 = parse_e0(value, source=f"config: {where}")
    except ValueError as e:
        raise WorkflowError(str(e)) from None
    from ase.data import chemical_symbols

    return {chemical_symbols[z]: v for z, v in sorted(e0.items())}


#: per dataset: supplied E0s or None (read and checked before any job runs)
E0 = {ds: _supplied_e0(ds) for ds in DATASETS}


def e0_option(wildcards):
    """params function: `--e0 '<JSON>'` with the dataset's supplied E0s, or nothing (a change of the values,
    also inside an E0 file, reruns the rules that use them)."""
    e0 = E0[wildcards.ds]
    return f"--e0 {shlex.quote(_json(e0))}" if e0 else ""

def quality_settings(wildcards):
    """params of the dataset's `quality` job: every quality setting."""
    return _json(QUALITY)


def quality_shard_settings(wildcards):
    """params of a `quality_shard` job: only the setting its sketch depends on (the near-duplicate grid)."""
    return _json({"near_duplicate_tolerance": QUALITY["near_duplicate_tolerance"]})


def all_outputs():
    out = []
    for ds in DATASETS:
        out += [f"results/{ds}/{name}" for name in
                ("manifest.json", "rejects.tsv", "statistics.json", "report.md", "flags.tsv")]
        if config["export"]["mace"]:
            out += [f for split in SPLIT_FILES for f in gather.shard(
                f"results/{ds}/mace/.done/{split}-{{scatteritem}}")]
    return out


# --------------------------------------------------------------------------------------------------
# the console: a failed job's reason, and one table per run
# --------------------------------------------------------------------------------------------------
def _last_line(path):
    """The last non-empty line of a job's log (the CLI's one-line error), or why there is none."""
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh.read()[-20000:].splitlines() if ln.strip()]
    except OSError:
        return "(no log written)"
    return lines[-1] if lines else "(empty log)"


def failed_jobs(snakemake_logs):
    """(rule, job log) of every failed job named in Snakemake's own log(s) (a path or a list of paths)."""
    text = ""
    for path in [snakemake_logs] if isinstance(snakemake_logs, str) else list(snakemake_logs or []):
        try:
            with open(path, errors="replace") as fh:
                text += fh.read()
        except OSError:
            pass
    out = []
    for block in re.split(r"\n(?=Error in rule )", text)[1:]:
        head = re.match(r"Error in rule (\S+?):", block)
        log_path = re.search(r"^\s+log: (.+?)(?: \(check log file|$)", block, re.M)
        if head and log_path:
            out += [(head.group(1), p) for p in log_path.group(1).split(", ")]
    return list(dict.fromkeys(out))


def run_table():
    """One row per dataset with a manifest: configs in / written / rejected / flagged and split counts."""
    rows = [["dataset", "in", "written", "rejected", "flagged", "train", "valid", "test"]]
    for ds in DATASETS:
        path = os.path.join("results", ds, "manifest.json")
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            man = json.load(fh)
        flagged = (man.get("quality") or {}).get("flagged", "-")  # absent: quality flags not computed
        splits = man.get("splits") or {}
        rows.append([ds, man.get("configs_in", "-"), man.get("written", "-"), man.get("rejected", "-"), flagged,
                     *((splits.get(s) or {}).get("n_configs", 0) for s in ("train", "valid", "test"))])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths))) for r in rows) if len(rows) > 1 else ""


onerror:
    for rule_name, job_log in failed_jobs(log):
        print(f"scfdata: {rule_name} failed ({job_log}): {_last_line(job_log)}", file=sys.stderr)


onsuccess:
    table = run_table()
    if table:
        print("\nscfdata: per dataset (configs)\n" + table, file=sys.stderr)
