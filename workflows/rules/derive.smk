# One rule per derived target, one job per shard; each writes a fragment (same configs, only its
# fields). Settings come from `reference.<target>` as params, so changing one block reruns only the
# jobs that read it (and what depends on them).


rule derive_molecules:
    input:
        shard_file("base"),
    output:
        shard_file("molecules"),
    params:
        settings=target_settings("molecules"),
    log:
        log_file("derive_molecules", "{scatteritem}"),
    benchmark:
        bench_file("derive_molecules", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive molecules --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"


rule derive_esps:
    input:
        shard_file("base"),
    output:
        shard_file("esps"),
    params:
        settings=target_settings("esps"),
    log:
        log_file("derive_esps", "{scatteritem}"),
    benchmark:
        bench_file("derive_esps", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive esps --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"


rule derive_fields:
    input:
        shard_file("base"),
    output:
        shard_file("fields"),
    params:
        settings=target_settings("fields"),
    log:
        log_file("derive_fields", "{scatteritem}"),
    benchmark:
        bench_file("derive_fields", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive fields --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"


rule derive_dipoles:
    input:
        shard_file("base"),
    output:
        shard_file("dipoles"),
    params:
        settings=target_settings("dipoles"),
    log:
        log_file("derive_dipoles", "{scatteritem}"),
    benchmark:
        bench_file("derive_dipoles", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive dipoles --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"


rule derive_molecular_forces:
    input:
        shard_file("base"),
        shard_file("molecules"),
    output:
        shard_file("molecular_forces"),
    params:
        settings=target_settings("molecular_forces"),
    log:
        log_file("derive_molecular_forces", "{scatteritem}"),
    benchmark:
        bench_file("derive_molecular_forces", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive molecular_forces --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"


rule derive_cluster_virial:
    input:
        shard_file("base"),
        shard_file("molecules"),
        shard_file("molecular_forces"),
    output:
        shard_file("cluster_virial"),
    params:
        settings=target_settings("cluster_virial"),
    log:
        log_file("derive_cluster_virial", "{scatteritem}"),
    benchmark:
        bench_file("derive_cluster_virial", "{scatteritem}")
    threads: 1
    shell:
        "scfdata derive cluster_virial --settings {params.settings:q} {input:q} -o {output:q} > {log:q} 2>&1"
