from pathlib import Path

from medsam3.logs import job_logging
from medsam3.pipeline.demo import build_demo

with job_logging(snakemake.log[0]):
    build_demo(Path(snakemake.output[0]).parent)
