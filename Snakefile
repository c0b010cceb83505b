# medsam3: text-promptable concept segmentation over imaging cohorts.
# Usage: snakemake --cores 2 [--config cohort=PATH outdir=DIR]; see README.md.
import os

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/train.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
