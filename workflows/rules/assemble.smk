# assemble: base + fragments of every shard -> results/<ds>/{train,valid,test}.h5 (non-empty splits),
# rejects.tsv and a manifest (the rule's declared output, since empty splits are not written).


rule assemble:
    input:
        split="results/{ds}/split.npz",
        index="results/{ds}/index.json",
        shards=lambda wc: [f for name in fragments(wc.ds) for f in gathered(name, wc.ds)],
    output:
        manifest="results/{ds}/manifest.json",
        rejects="results/{ds}/rejects.tsv",
    params:
        shard_files=assemble_shard_files,
        reference=reference_settings,
        outdir="results/{ds}",
    log:
        log_file("assemble"),
    benchmark:
        bench_file("assemble")
    threads: 1
    shell:
        "scfdata assemble --dataset {wildcards.ds} --split {input.split:q} --index {input.index:q}"
        " --reference {params.reference:q} --shard-files {params.shard_files:q}"
        " -o {params.outdir:q} 2>&1 | tee {log:q}"
