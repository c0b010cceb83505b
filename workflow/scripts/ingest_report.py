from medsam3.logs import job_logging
from medsam3.status import write_ingest_reports

with job_logging(snakemake.log[0]):
    write_ingest_reports(snakemake.input, snakemake.params.outdir)
