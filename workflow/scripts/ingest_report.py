from medsam3.logs import job_logging
from medsam3.pipeline.status import write_ingest_failures

with job_logging(snakemake.log[0]):
    write_ingest_failures(snakemake.input, snakemake.output.failures)
