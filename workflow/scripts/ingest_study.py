from pathlib import Path

from medsam3.logs import job_logging
from medsam3.pipeline.cohort import Study
from medsam3.pipeline.ingest import ingest_study

p = snakemake.params
outdir = Path(snakemake.output.status).parents[2]  # {outdir}/status/ingest/{study}.json
with job_logging(snakemake.log[0]):
    study = Study(snakemake.wildcards.study, p.path, p.modality or None, ())
    ingest_study(study, outdir, include_paths=p.report_paths)
