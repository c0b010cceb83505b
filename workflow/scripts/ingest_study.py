from medsam3.logs import job_logging
from medsam3.pipeline.cohort import StudyRef, resolve_studies
from medsam3.pipeline.ingest import ingest_study
from medsam3.pipeline.settings import IngestSettings

with job_logging(snakemake.log[0]):
    ref = StudyRef.from_params(snakemake.params.study)
    cohort, salt = snakemake.config["cohort"], snakemake.config["study_id_salt"]
    (study,) = resolve_studies(cohort, salt, [ref])
    ingest_study(study, IngestSettings.from_params(snakemake.params.settings))
