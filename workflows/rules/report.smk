# report: results/<ds>/report.md with counts, coverage, rejects and PNG plots (results/<ds>/plots/).


rule report:
    input:
        manifest="results/{ds}/manifest.json",
        statistics="results/{ds}/statistics.json",
        flags="results/{ds}/flags.tsv",
    output:
        "results/{ds}/report.md",
    log:
        log_file("report"),
    benchmark:
        bench_file("report")
    threads: 1
    shell:
        "{SCFDATA} report --manifest {input.manifest:q} --statistics {input.statistics:q} --flags {input.flags:q}"
        " -o {output:q} > {log:q} 2>&1"
