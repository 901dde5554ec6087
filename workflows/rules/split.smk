# split: seeded train/valid/test labels for every written config of the dataset (over all shards).


rule split:
    input:
        base=lambda wc: gathered("base", wc.ds),
        molecules=lambda wc: gathered("molecules", wc.ds) if split_by_molecules(wc) else [],
        quality="results/{ds}/quality.npz",
    output:
        "results/{ds}/split.npz",
    params:
        settings=split_settings,
        molecules=lambda wc, input: ("--molecules " + " ".join(input.molecules)) if input.molecules else "",
    log:
        log_file("split"),
    benchmark:
        bench_file("split")
    priority: QUALITY_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} split --settings {params.settings:q} {input.base:q} {params.molecules}"
        " --quality {input.quality:q} -o {output:q} > {log:q} 2>&1"
