from medsam3.logs import job_logging
from medsam3.pipeline.cohort import Shard, resolve_studies
from medsam3.pipeline.infer import segment_shard
from medsam3.pipeline.settings import SegmentSettings

with job_logging(snakemake.log[0]):
    shard = Shard.from_params(snakemake.params.shard)
    cohort, salt = snakemake.config["cohort"], snakemake.config["study_id_salt"]
    studies = resolve_studies(cohort, salt, shard.studies)
    segment_shard(shard.name, studies, SegmentSettings.from_params(snakemake.params.settings))
