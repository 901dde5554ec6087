# index: count each dataset's frames once, read their headers (the key mapping is checked there, before any
# ingest job: a key typo stops the run) and plan the shards; ingest: one job per shard.


rule index:
    input:
        inputs=lambda wc: dataset(wc)["inputs"],
        keys_from=lambda wc: [dataset(wc)["keys_from"]] if dataset(wc).get("keys_from") else [],
    output:
        "results/{ds}/index.json",
    params:
        shards=n_shards(),
        format=format_option,
        settings=ingest_settings,
    log:
        log_file("index"),
    benchmark:
        bench_file("index")
    priority: INDEX_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} index {input.inputs:q} --shards {params.shards} --settings {params.settings:q}"
        " {params.format} -o {output:q} > {log:q} 2>&1"


rule ingest:
    input:
        index="results/{ds}/index.json",
        keys_from=lambda wc: [dataset(wc)["keys_from"]] if dataset(wc).get("keys_from") else [],
    output:
        shard_file("base"),
    params:
        shard=shard_index,
        settings=ingest_settings,
    log:
        log_file("ingest", "{scatteritem}"),
    benchmark:
        bench_file("ingest", "{scatteritem}")
    priority: INGEST_PRIORITY
    threads: 1
    shell:
        "{SCFDATA} ingest --index {input.index:q} --shard {params.shard} --settings {params.settings:q}"
        " -o {output:q} > {log:q} 2>&1"
