from medsam3.logs import job_logging
from medsam3.training.config import load_config
from medsam3.training.train import train

with job_logging(snakemake.log[0]):
    settings = load_config(snakemake.input.config)
    settings["output"] = snakemake.output.head
    if "init" in snakemake.input.keys():
        settings["init_from"] = snakemake.input.init
    train(settings)
