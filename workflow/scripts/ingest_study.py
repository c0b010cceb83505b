from medsam3.logs import job_logging
from medsam3.pipeline.cohort import Study
from medsam3.pipeline.ingest import ingest_study
from medsam3.pipeline.settings import IngestSettings

with job_logging(snakemake.log[0]):
    study = Study.from_params(snakemake.params.study)
    ingest_study(study, IngestSettings.from_params(snakemake.params.settings))
