# One rule per derived target (`derive_<target>`), made from the registry in scfdata/targets.py: one job
# per shard, each writing a fragment (the same configs, only the target's fields). A dataset runs only the
# targets it derives (`enabled: auto` skips those its keys cannot supply). Settings are params per
# dataset, so changing one block reruns only the jobs that read it (and what depends on them).
# Targets with compiled kernels (numba) have one warm-up job per dataset that compiles the kernels its
# settings need, once per machine (numba's on-disk cache; the next dataset's warm-up loads them), before
# that dataset's shard jobs, instead of every shard job compiling them at the same time. Its flag is a
# plain input: it changes exactly when the dataset's settings of the target change, and then every shard
# job of the target reruns anyway (an ancient() input would let Snakemake skip a params rerun).

WARM_UP_FLAG = "results/{ds}/warm-up/{target}.done"


rule warm_up:
    output:
        WARM_UP_FLAG,
    params:
        datasets=lambda wc: warm_up_datasets(wc.target, wc.ds),
    log:
        log_file("warm_up", "{target}"),
    wildcard_constraints:
        target="|".join(t.name for t in targets.TARGETS.values() if t.warm_up),
    threads: 1
    shell:
        "{SCFDATA} warm-up {wildcards.target} --datasets {params.datasets:q} -o {output:q} > {log:q} 2>&1"


for _t in targets.TARGETS.values():

    rule:
        name:
            f"derive_{_t.name}"
        input:
            base=shard_file("base"),
            depends=[shard_file(d) for d in _t.depends],
            warm_up=[WARM_UP_FLAG.replace("{target}", _t.name)] if _t.warm_up else [],
        output:
            shard_file(_t.name),
        params:
            target=_t.name,
            settings=target_settings(_t.name),
        log:
            log_file(f"derive_{_t.name}", "{scatteritem}"),
        benchmark:
            bench_file(f"derive_{_t.name}", "{scatteritem}")
        threads: 1
        shell:
            "{SCFDATA} derive {params.target} --settings {params.settings:q} {input.base:q} {input.depends:q}"
            " -o {output:q} > {log:q} 2>&1"
