from medsam3.cohort import Study
from medsam3.ingest import ingest_study
from medsam3.logs import job_logging

p = snakemake.params
with job_logging(snakemake.log[0]):
    study = Study(snakemake.wildcards.study, p.path, p.modality or None, ())
    ingest_study(study, p.outdir, include_paths=p.report_paths)
