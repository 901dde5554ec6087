# export (optional, `export: {mace: true}`): every split in MACE's HDF5 layout, one job per shard
# (MACE's group-per-config layout is slow to write, so it is spread over the shards). A split that is
# empty (no file) exports nothing; the flag file records that the shard is done.

SPLIT_FILES = ["train", "valid", "test"]


rule export_mace:
    input:
        manifest="results/{ds}/manifest.json",
    output:
        touch("results/{ds}/mace/.done/{split}-{scatteritem}"),
    params:
        n=lambda wc: n_shards(),
        k=shard_index,
        head=config["export"]["head"],
        source="results/{ds}/{split}.h5",
        outdir="results/{ds}/mace",
        e0=lambda wc: e0_option(wc) if wc.split == "train" else "",  # E0s go to the train split's statistics
    wildcard_constraints:
        split="train|valid|test",
    log:
        log_file("export_mace", "{split}-{scatteritem}"),
    benchmark:
        bench_file("export_mace", "{split}-{scatteritem}")
    threads: 1
    shell:
        "if [ -f {params.source:q} ]; then {SCFDATA} export {params.source:q} --format mace -o {params.outdir:q}"
        " --n-shards {params.n} --shard {params.k} --head {params.head:q} {params.e0}; else echo 'empty split'; fi"
        " > {log:q} 2>&1"
