# quality: flags of every dataset (duplicates, outliers, renormalised charges, dipole disagreements; see
# scfdata/quality/): a small sketch per base shard, merged per dataset into results/<ds>/quality.npz and
# results/<ds>/flags.tsv (written together). `quality: {enabled: false}` skips the sketches: all flags 0.


rule quality_shard:
    input:
        shard_file("base"),
    output:
        shard_file("quality", "npz"),
    params:
        settings=quality_shard_settings,
    log:
        log_file("quality_shard", "{scatteritem}"),
    benchmark:
        bench_file("quality_shard", "{scatteritem}")
    priority: QUALITY_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} quality-shard {input:q} --settings {params.settings:q} -o {output:q} > {log:q} 2>&1"


rule quality:
    input:
        base=lambda wc: gathered("base", wc.ds),
        sketches=lambda wc: gathered("quality", wc.ds, "npz") if QUALITY["enabled"] else [],
    output:
        npz="results/{ds}/quality.npz",
        tsv="results/{ds}/flags.tsv",
    params:
        settings=quality_settings,
        sketches=lambda wc, input: " ".join(["--sketches", *map(shlex.quote, input.sketches)]) if input.sketches
        else "",
    log:
        log_file("quality"),
    benchmark:
        bench_file("quality")
    priority: QUALITY_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} quality --base {input.base:q} {params.sketches} --settings {params.settings:q}"
        " -o {output.npz:q} --flags {output.tsv:q} > {log:q} 2>&1"
