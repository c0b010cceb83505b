from medsam3.logs import job_logging
from medsam3.pipeline.cohort import Shard
from medsam3.pipeline.infer import segment_shard
from medsam3.pipeline.settings import SegmentSettings

with job_logging(snakemake.log[0]):
    shard = Shard.from_params(snakemake.params.shard)
    segment_shard(shard, SegmentSettings.from_params(snakemake.params.settings))
