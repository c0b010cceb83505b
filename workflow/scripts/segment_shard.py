from medsam3.logs import job_logging
from medsam3.pipeline.cohort import Study
from medsam3.pipeline.infer import segment_shard

with job_logging(snakemake.log[0]):
    studies = [
        Study(r["study_id"], r["path"], r["modality"], tuple(r["concepts"]))
        for r in snakemake.params.studies
    ]
    cfg = dict(snakemake.params.settings)
    segment_shard(snakemake.wildcards.shard, studies, cfg, snakemake.output.status)
