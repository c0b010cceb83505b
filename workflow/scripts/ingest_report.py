from pathlib import Path

from medsam3.logs import job_logging
from medsam3.pipeline.status import write_ingest_reports

with job_logging(snakemake.log[0]):
    outdir = Path(snakemake.output.done).parents[1]  # {outdir}/reports/ingest.done
    write_ingest_reports(snakemake.input, outdir)
