# scfdata workflow: DFT outputs -> ingest -> derived targets -> split -> assemble -> statistics -> report.
# Run `snakemake --cores 8` (bundled example) or `snakemake --cores 8 --configfile my.yaml`.
# Documentation: docs/workflow.md. Rules live in workflows/rules/, the config schema in workflows/schemas/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflows/rules/common.smk"
include: "workflows/rules/ingest.smk"
include: "workflows/rules/quality.smk"
include: "workflows/rules/derive.smk"
include: "workflows/rules/split.smk"
include: "workflows/rules/assemble.smk"
include: "workflows/rules/statistics.smk"
include: "workflows/rules/report.smk"
include: "workflows/rules/export.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
