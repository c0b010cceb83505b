from pathlib import Path

from medsam3.demo import build_demo
from medsam3.logs import job_logging

with job_logging(snakemake.log[0]):
    build_demo(Path(snakemake.output[0]).parent)
