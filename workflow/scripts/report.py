from medsam3.logs import job_logging
from medsam3.pipeline.aggregate import write_reports
from medsam3.pipeline.settings import ReportSettings

# The guard keeps Dask's spawned worker processes from re-running this script on import.
if __name__ == "__main__":
    with job_logging(snakemake.log[0]):
        settings = ReportSettings.from_params(snakemake.params.settings)
        write_reports(snakemake.input.ingest, snakemake.input.segment, settings)
