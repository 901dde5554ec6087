# Config validation and the helpers every rule uses. Rules stay thin shell calls into the `scfdata` CLI.
import copy
import json
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


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


def _check_schema(schema_path):
    """Validate without defaults first, for a one-line error; then snakemake's validate fills defaults."""
    import jsonschema
    import yaml

    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if err is not None:
        raise WorkflowError(_schema_error(err) + " (schema: workflows/schemas/config.schema.yaml)")


_check_schema(os.path.join(workflow.basedir, "workflows/schemas/config.schema.yaml"))
validate(config, "../schemas/config.schema.yaml")


# Sharding: `shards:` in the config, or `--set-scatter shard=N` on the command line (which wins).
# One shard = one job per shard-level rule; every dataset is cut into this many shards.
scattergather:
    shard=config["shards"],

#: Derived targets in dependency order, with the shard files each one reads (besides nothing else).
TARGET_INPUTS = {
    "molecules": ["base"],
    "esps": ["base"],
    "fields": ["base"],
    "dipoles": ["base"],
    "molecular_forces": ["base", "molecules"],
    "cluster_virial": ["base", "molecules", "molecular_forces"],
}
DATASETS = list(config["datasets"])
ENABLED = [t for t in TARGET_INPUTS if config["reference"][t]["enabled"]]


def _check_config():
    """What JSON Schema cannot say, checked before any job runs."""
    for t in ENABLED:
        off = [d for d in TARGET_INPUTS[t] if d != "base" and d not in ENABLED]
        if off:
            raise WorkflowError(
                f"config: reference.{t} is enabled but needs reference.{off[0]}, which is switched off; "
                f"enable reference.{off[0]} or set reference.{t}.enabled: false"
            )
    from scfdata.keys import mapping_for_dataset

    for name, ds in config["datasets"].items():
        where = f"datasets.{name}"
        missing = [p for p in ds["inputs"] if not os.path.isfile(p)]
        if missing:
            raise WorkflowError(
                f"config: {where}.inputs: file not found: {', '.join(missing)} "
                f"(paths are relative to the working directory {os.getcwd()})"
            )
        if bool(ds.get("keys")) == bool(ds.get("keys_from")):
            raise WorkflowError(f"config: {where}: give exactly one of `keys` or `keys_from`")
        if ds.get("keys_from") and not os.path.isfile(ds["keys_from"]):
            raise WorkflowError(f"config: {where}.keys_from: file not found: {ds['keys_from']}")
        try:
            mapping_for_dataset(ds, where=where)
        except ValueError as e:
            raise WorkflowError(f"config: {e}") from None
        split = ds.get("split") or {}
        if split.get("valid_fraction", 0) + split.get("test_fraction", 0) > 1:
            raise WorkflowError(f"config: {where}.split: valid_fraction + test_fraction must be <= 1")
    _check_esps_preset()


def _check_esps_preset():
    """reference.esps settings (used by esps and fields) the derive step would refuse, and, with
    preset: mace_scf, the packages the preset imports (graph-longrange, which imports mace)."""
    esps = config["reference"]["esps"]
    users = [t for t in ("esps", "fields") if t in ENABLED]
    if not users:
        return
    import importlib.util

    from scfdata.derive import _esp_settings

    try:
        if esps.get("preset") is None:
            _esp_settings(esps)
            return
        from scfdata.derive_esp_preset import preset_settings  # imports torch: only with a preset

        preset_settings(esps)
    except ValueError as e:
        raise WorkflowError(f"config: {e}") from None
    from scfdata.reference.mace_scf_preset import INSTALL_HINT
    missing = [m for m in ("graph_longrange", "mace") if importlib.util.find_spec(m) is None]
    if missing:
        raise WorkflowError(
            f"config: reference.esps.preset: mace_scf (used by {' and '.join(users)}) computes the ESP with "
            f"graph-longrange (MACE_SCF's electrostatics), but {' and '.join(missing)} cannot be imported in this "
            f"environment: {INSTALL_HINT}, or remove `preset` from reference.esps"
        )


_check_config()

# One thread per job (shard rules are single-threaded by design: parallelism comes from the shards).
shell.prefix("set -euo pipefail; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1; ")

wildcard_constraints:
    ds="|".join(re.escape(d) for d in DATASETS) or "no-dataset",


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


def fragments():
    """Files per shard that assemble merges: base first, then every enabled target."""
    return ["base"] + ENABLED


def assemble_shard_files(wildcards):
    """One argument per shard for `scfdata assemble --shard-files`: base,fragment,... comma-separated."""
    per_shard = [gathered(name, wildcards.ds) for name in fragments()]
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
    """The reference block of a target without `enabled`; fields share the esps settings."""
    block = dict(config["reference"][target])
    if target == "fields":
        block = {**config["reference"]["esps"], **block}
    block.pop("enabled", None)
    return _json(block)


def split_settings(wildcards):
    split = dataset(wildcards).get("split")
    if split is None:
        return _json({"valid_fraction": 0.0, "test_fraction": 0.0, "seed": 0, "by": "random"})
    return _json(split)


def split_by_molecules(wildcards):
    split = dataset(wildcards).get("split") or {}
    return split.get("by") == "composition" and "molecules" in ENABLED


def reference_settings():
    return _json({t: config["reference"][t] for t in TARGET_INPUTS})


def all_outputs():
    out = []
    for ds in DATASETS:
        out += [f"results/{ds}/{name}" for name in
                ("manifest.json", "rejects.tsv", "statistics.json", "report.md")]
        if config["export"]["mace"]:
            out += [f for split in SPLIT_FILES for f in gather.shard(
                f"results/{ds}/mace/.done/{split}-{{scatteritem}}")]
    return out
