# Shared Python for the rules: config and cohort validation, study lookups, input functions.
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from medsam3.pipeline.cohort import load_cohort, read_table
from medsam3.pipeline.infer import shard_studies

validate(config, "../schemas/config.schema.yaml")

OUT = config["outdir"].rstrip("/")
DEMO_DATA = Path(workflow.basedir, "resources", "demo", "data").resolve()
STUDY_WILDCARD = "[A-Za-z0-9][A-Za-z0-9._-]*"


def workflow_path(path):
    """A config path as given (relative to the working directory), else relative to the repo."""
    if not path or Path(path).exists():
        return path
    in_repo = Path(workflow.basedir, path)
    return str(in_repo) if in_repo.exists() else path


COHORT = workflow_path(config["cohort"])
GROUND_TRUTH = workflow_path(config.get("ground_truth") or "")
validate(read_table(COHORT), "../schemas/cohort.schema.yaml")
STUDIES = {s.study_id: s for s in load_cohort(COHORT, config["study_id_salt"])}


wildcard_constraints:
    study=STUDY_WILDCARD,


def rule_resources(group):
    """mem_mb / runtime (minutes) for a rule group from config['resources']."""
    res = config.get("resources", {}).get(group, {})
    return {"mem_mb": res.get("mem_mb", 4000), "runtime": res.get("runtime", 30)}


def get_ingest_input(wildcards):
    """The study's source (so edits trigger re-ingest), or the demo builder for demo data."""
    source = Path(STUDIES[wildcards.study].path)
    if DEMO_DATA in source.parents:
        return {"demo": str(DEMO_DATA)}
    return {"source": str(source)} if source.exists() else {}


def get_study_path(wildcards):
    return STUDIES[wildcards.study].path


def get_study_modality(wildcards):
    return STUDIES[wildcards.study].modality or ""


def get_ingest_statuses(wildcards=None):
    return [f"{OUT}/status/ingest/{sid}.json" for sid in STUDIES]


def get_final_outputs():
    """Targets of the default rule."""
    return [f"{OUT}/reports/report.html"]


SHARDS = shard_studies(list(STUDIES), config["shard_size"])


wildcard_constraints:
    shard="shard-[0-9]+",


def get_shard_ingest_statuses(wildcards):
    return [f"{OUT}/status/ingest/{sid}.json" for sid in SHARDS[wildcards.shard]]


def get_shard_studies(wildcards):
    """The shard's cohort rows as plain dicts (params: a change re-runs only this shard)."""
    return [
        {
            "study_id": sid,
            "path": STUDIES[sid].path,
            "modality": STUDIES[sid].modality,
            "concepts": list(STUDIES[sid].concepts),
        }
        for sid in SHARDS[wildcards.shard]
    ]


def get_segment_statuses(wildcards=None):
    return [f"{OUT}/status/segment/{shard}.json" for shard in SHARDS]


def segment_settings():
    """The config keys segmentation depends on (a change to these re-runs the shards)."""
    keys = ("outdir", "model", "export", "default_concepts", "report_paths")
    return {key: config.get(key) for key in keys}


def report_settings():
    """The config keys the report job depends on."""
    return {key: config.get(key) for key in ("outdir", "nsd_tolerance_mm", "dask")}
