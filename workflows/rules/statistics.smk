# statistics: mergeable sums per shard (training configs only), merged into results/<ds>/statistics.json
# (with the supplied isolated-atom energies of `statistics: {e0: ...}`, which take precedence over the fit).


rule statistics_shard:
    input:
        split="results/{ds}/split.npz",
        files=lambda wc: [shard_file(name) for name in fragments(wc.ds)],
    output:
        shard_file("statistics", "json"),
    params:
        shard=shard_index,
    log:
        log_file("statistics_shard", "{scatteritem}"),
    benchmark:
        bench_file("statistics_shard", "{scatteritem}")
    priority: STATISTICS_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} statistics-shard --split {input.split:q} --shard {params.shard} {input.files:q}"
        " -o {output:q} > {log:q} 2>&1"


rule statistics:
    input:
        lambda wc: gathered("statistics", wc.ds, "json"),
    output:
        "results/{ds}/statistics.json",
    params:
        e0=e0_option,
    log:
        log_file("statistics"),
    benchmark:
        bench_file("statistics")
    priority: STATISTICS_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} statistics --dataset {wildcards.ds} {params.e0} {input:q} -o {output:q} > {log:q} 2>&1"
