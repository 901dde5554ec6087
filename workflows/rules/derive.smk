# One rule per derived target (`derive_<target>`), made from the registry in scfdata/targets.py: one job
# per shard, each writing a fragment (the same configs, only the target's fields). A dataset runs only the
# targets it derives (`enabled: auto` skips those its keys cannot supply). Settings are params per
# dataset, so changing one block reruns only the jobs that read it (and what depends on them).
# Targets with compiled kernels (numba) depend on one warm-up job that compiles them once per machine
# (numba's on-disk cache), instead of every shard job compiling them at the same time.

WARM_UP_FLAG = "results/.warm-up/{target}.done"


rule warm_up:
    output:
        WARM_UP_FLAG,
    params:
        datasets=lambda wc: warm_up_datasets(wc.target),
    log:
        "results/.warm-up/{target}.log",
    threads: 1
    shell:
        "scfdata warm-up {wildcards.target} --datasets {params.datasets:q} -o {output:q} > {log:q} 2>&1"


for _t in targets.TARGETS.values():

    rule:
        name:
            f"derive_{_t.name}"
        input:
            base=shard_file("base"),
            depends=[shard_file(d) for d in _t.depends],
            # ancient: a new flag (a fresh results/.warm-up) must not make finished shards look outdated
            warm_up=[ancient(WARM_UP_FLAG.format(target=_t.name))] if _t.warm_up else [],
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
            "scfdata derive {params.target} --settings {params.settings:q} {input.base:q} {input.depends:q}"
            " -o {output:q} > {log:q} 2>&1"
