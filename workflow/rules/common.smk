# Shared Python for the rules: config and cohort validation, the output layout, typed params.
from pathlib import Path

from snakemake.utils import validate

from medsam3.pipeline.cohort import load_cohort, read_table, shard_studies
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.settings import (
    IngestSettings,
    JobResources,
    ReportSettings,
    SegmentSettings,
)

# Fills every optional key with its schema default: the defaults live in the schema only.
validate(config, "../schemas/config.schema.yaml", set_default=True)

LAYOUT = Layout(config["outdir"])
DEMO_DATA = Path(workflow.basedir, "resources", "demo", "data").resolve()
STUDY_WILDCARD = "[A-Za-z0-9][A-Za-z0-9._-]*"


def workflow_path(path):
    """A config path as given (relative to the working directory), else relative to the repo."""
    if not path or Path(path).exists():
        return path
    in_repo = Path(workflow.basedir, path)
    return str(in_repo) if in_repo.exists() else path


COHORT = workflow_path(config["cohort"])
GROUND_TRUTH = workflow_path(config["ground_truth"] or "")
validate(read_table(COHORT), "../schemas/cohort.schema.yaml")
STUDIES = {s.study_id: s for s in load_cohort(COHORT, config["study_id_salt"])}
SHARDS = shard_studies(list(STUDIES.values()), config["shard_size"])
INGEST_SETTINGS = IngestSettings.from_config(config)
SEGMENT_SETTINGS = SegmentSettings.from_config(config)
REPORT_SETTINGS = ReportSettings.from_config(config, GROUND_TRUTH)


wildcard_constraints:
    study=STUDY_WILDCARD,
    shard="shard-[0-9]+",


def rule_resources(group):
    """mem_mb and runtime (minutes) of a rule group (config resources, schema defaults)."""
    res = JobResources.from_config(config, group)
    return {"mem_mb": res.mem_mb, "runtime": res.runtime}


def get_ingest_input(wildcards):
    """The study's source (so edits trigger re-ingest), or the demo builder for demo data."""
    source = Path(STUDIES[wildcards.study].path)
    if DEMO_DATA in source.parents:
        return {"demo": str(DEMO_DATA)}
    return {"source": str(source)} if source.exists() else {}


def get_ingest_study(wildcards):
    """The study as ingest params: its source only (editing concepts re-runs segmentation)."""
    return STUDIES[wildcards.study].source_only().to_params()


def get_ingest_statuses(wildcards=None):
    return [LAYOUT.status("ingest", sid) for sid in STUDIES]


def get_final_outputs():
    """Targets of the default rule."""
    return [LAYOUT.html_report()]


def get_shard_ingest_statuses(wildcards):
    return [
        LAYOUT.status("ingest", s.study_id) for s in SHARDS[wildcards.shard].studies
    ]


def get_shard(wildcards):
    """The shard's cohort rows as params (a change re-runs only this shard)."""
    return SHARDS[wildcards.shard].to_params()


def get_segment_statuses(wildcards=None):
    return [LAYOUT.status("segment", shard) for shard in SHARDS]
