from medsam3.aggregate import write_reports
from medsam3.logs import job_logging

# The guard keeps Dask's spawned worker processes from re-running this script on import.
if __name__ == "__main__":
    with job_logging(snakemake.log[0]):
        write_reports(
            snakemake.input.ingest,
            snakemake.input.segment,
            dict(snakemake.params.settings),
            snakemake.params.ground_truth,
        )
