from medsam3.logs import job_logging
from medsam3.pipeline.aggregate import write_reports

# The guard keeps Dask's spawned worker processes from re-running this script on import.
if __name__ == "__main__":
    with job_logging(snakemake.log[0]):
        write_reports(
            snakemake.input.ingest,
            snakemake.input.segment,
            dict(snakemake.params.settings),
            snakemake.params.ground_truth,
        )
