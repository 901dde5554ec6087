# assemble: base + fragments of every shard -> results/<ds>/{train,valid,test}.h5 (non-empty splits),
# rejects.tsv and a manifest (the rule's declared output, since empty splits are not written). The set is
# published atomically: every split file carries the manifest's split_id (see scfdata/commands/assemble.py).


def _unpublish_damaged_sets():
    """A published split file that is missing, of another size than the manifest records, or of another
    split id (deleted, truncated, replaced) voids its set: the manifest is removed before the DAG is
    built, so Snakemake rebuilds the set and what depends on it (a dry run too unpublishes it: the set is
    no longer one anyway). Which splits are written depends on the data (empty ones are not), so they
    cannot be declared outputs; this check stands in for that. Only the main Snakemake process checks
    (not the jobs' own parses on a cluster)."""
    if not workflow.is_main_process:
        return
    from scfdata.verify import published_set_problem

    for ds in DATASETS:
        problem = published_set_problem(f"results/{ds}")
        if problem is not None:
            logger.warning(f"assemble: {problem}: the published set of {ds} is rebuilt")
            os.remove(f"results/{ds}/manifest.json")


_unpublish_damaged_sets()


rule assemble:
    input:
        split="results/{ds}/split.npz",
        index="results/{ds}/index.json",
        quality="results/{ds}/quality.npz",
        shards=lambda wc: [f for name in fragments(wc.ds) for f in gathered(name, wc.ds)],
    output:
        manifest="results/{ds}/manifest.json",
        rejects="results/{ds}/rejects.tsv",
    params:
        shard_files=assemble_shard_files,
        reference=reference_settings,
        outdir="results/{ds}",
        drop=lambda wc: _json(QUALITY["drop"]),
    log:
        log_file("assemble"),
    benchmark:
        bench_file("assemble")
    threads: 1
    shell:
        "{SCFDATA} assemble --dataset {wildcards.ds} --split {input.split:q} --index {input.index:q}"
        " --reference {params.reference:q} --shard-files {params.shard_files:q}"
        " --quality {input.quality:q} --drop {params.drop:q} -o {params.outdir:q} 2>&1 | tee {log:q}"
