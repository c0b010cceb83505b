import yaml

from medsam3.logs import job_logging
from medsam3.training.train import train

with job_logging(snakemake.log[0]):
    with open(snakemake.input.config) as fh:
        settings = yaml.safe_load(fh)
    settings["output"] = snakemake.output.head
    train(settings)
