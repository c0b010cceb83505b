# Shared Python for the rules: config and cohort validation, the output folder (working
# directory, run lock, stale files), typed params, and the run's start and end messages.
#
# No source path reaches Snakemake: rule params and inputs hold study ids and references
# (StudyRef), because Snakemake prints both and keeps them in .snakemake/; each job reads its
# studies' paths from the validated cohort table. Snakemake's state (.snakemake: metadata,
# locks, its run logs) lives in the output folder: `workdir:` below makes it the working
# directory, after every configured path has been made absolute.
import os
import shutil
from dataclasses import replace
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.utils import validate

from medsam3.pipeline.cohort import load_cohort, read_table, shard_studies
from medsam3.pipeline.demo import write_tables
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.outdir import check_outdir, lock_outdir, remove_stale_files
from medsam3.pipeline.settings import (
    IngestSettings,
    JobResources,
    ModelSettings,
    ReportSettings,
    SegmentSettings,
    ground_truth_table,
    run_warnings,
    typed_config,
)
from medsam3.pipeline.status import run_summary

# Nested --config values arrive as strings (agent="{max_rounds: 1}"): typed by the schema first.
# Validation fills every optional key with its schema default: the defaults live in the schema.
CONFIG_SCHEMA = Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
config.update(
    typed_config(config, yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8")))
)
validate(config, "../schemas/config.schema.yaml", set_default=True)

DEMO = Path(workflow.basedir, "resources", "demo").resolve()  # names the demo cohort
STUDY_WILDCARD = "[A-Za-z0-9][A-Za-z0-9._-]*"


def workflow_path(path):
    """A config path as an absolute path: as given (relative to the launch folder), else
    relative to the repository; "" stays ""."""
    if not path:
        return ""
    in_repo = Path(workflow.basedir, path)
    if not Path(path).exists() and in_repo.exists():
        return str(in_repo.resolve())
    return str(Path(path).expanduser().absolute())


def is_demo(study):
    """True for a study of the embedded demo cohort (built by rule demo_data)."""
    return DEMO_DATA in Path(study.path).parents


def demo_cohort(layout):
    """The demo's tables under the outdir (written when missing or changed): the demo runs
    on data that rule demo_data builds there, never in the source tree."""
    write_tables(layout.demo())
    return str(layout.demo() / "cohort.csv")


def move_snakemake_log(state):
    """Move Snakemake's run log into the outdir's .snakemake/log.

    Snakemake opens it in the launch folder before reading the Snakefile, so `workdir:` alone
    leaves .snakemake/log/ there; the log moves under the output folder with the rest of
    Snakemake's state, and the launch folder's emptied .snakemake/ is removed.
    """
    handlers = getattr(workflow.logger_manager, "logfile_handlers", {})
    for handler, old in list(handlers.items()):
        new = Path(state, "log", Path(old).name)
        if Path(old).resolve() == new.resolve():
            continue
        new.parent.mkdir(parents=True, exist_ok=True)
        handler.acquire()
        try:
            handler.close()
            shutil.move(old, new)
            handler.baseFilename = str(new)
            handler.stream = handler._open()
        finally:
            handler.release()
        handlers[handler] = str(new)
        for folder in (Path(old).parent, Path(old).parent.parent):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


config["outdir"] = str(check_outdir(config["outdir"]))
LAYOUT = Layout(config["outdir"])
if workflow.is_main_process:  # not in the jobs a cluster runs, which read this file too
    RUN_LOCK = lock_outdir(LAYOUT)  # held until this process ends
    move_snakemake_log(LAYOUT.snakemake_state())
    remove_stale_files(LAYOUT)
config["cohort"] = workflow_path(config["cohort"])
for key in ("checkpoint", "lora"):
    config["model"][key] = workflow_path(config["model"][key])
DEMO_COHORT = Path(config["cohort"]).resolve() == DEMO / "cohort.csv"
DEMO_DATA = LAYOUT.demo() / "data"
if DEMO_COHORT:
    config["cohort"] = demo_cohort(LAYOUT)
DEMO_TRUTH = str(LAYOUT.demo() / "ground_truth.csv")
GROUND_TRUTH = workflow_path(
    ground_truth_table(config["ground_truth"], DEMO_COHORT, DEMO_TRUTH)
)
RUN_WARNINGS = run_warnings(
    config["study_id_salt"], DEMO_COHORT, GROUND_TRUTH, str(DEMO / "ground_truth.csv")
)
validate(read_table(config["cohort"]), "../schemas/cohort.schema.yaml")
STUDIES = {
    s.study_id: s for s in load_cohort(config["cohort"], config["study_id_salt"])
}
REFS = {
    # the demo sources appear when demo_data builds them: their time is not a change
    sid: replace(s.ref(), source_stamp="demo") if is_demo(s) else s.ref()
    for sid, s in STUDIES.items()
}
SHARDS = shard_studies(list(REFS.values()), config["shard_size"])
INGEST_SETTINGS = IngestSettings.from_config(config)
SEGMENT_SETTINGS = SegmentSettings.from_config(config, tuple(RUN_WARNINGS))
REPORT_SETTINGS = ReportSettings.from_config(config, GROUND_TRUTH)


workdir: config["outdir"]


wildcard_constraints:
    study=STUDY_WILDCARD,
    shard="shard-[0-9]+",


def rule_resources(group):
    """mem_mb and runtime (minutes) of a rule group (config resources, schema defaults)."""
    res = JobResources.from_config(config, group)
    return {"mem_mb": res.mem_mb, "runtime": res.runtime}


def segment_resources():
    """mem_mb, runtime and gpu of a segment job. gpu "auto" (the default) asks for one GPU
    when the configured backend and device will use it; such a job goes to the partition in
    $MEDSAM3_SLURM_GPU_PARTITION when set (profiles/slurm), any other to the default one.
    """
    gpus = JobResources.from_config(config, "segment").gpus(
        ModelSettings.from_config(config)
    )
    res = {**rule_resources("segment"), "gpu": gpus}
    partition = os.environ.get("MEDSAM3_SLURM_GPU_PARTITION")
    if gpus and partition:
        res["slurm_partition"] = partition
    return res


def get_ingest_input(wildcards):
    """The demo builder for demo data; no input otherwise (a source path is never an input:
    Snakemake would print it; its size and time are in the params instead)."""
    return {"demo": str(DEMO_DATA)} if is_demo(STUDIES[wildcards.study]) else {}


def get_ingest_study(wildcards):
    """The study as ingest params: its reference without concepts (editing concepts re-runs
    segmentation but not ingest, which would rewrite the store and drop its masks)."""
    return REFS[wildcards.study].source_only().to_params()


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
    """The shard's study references as params (a change re-runs only this shard)."""
    return SHARDS[wildcards.shard].to_params()


def get_segment_statuses(wildcards=None):
    return [LAYOUT.status("segment", shard) for shard in SHARDS]


def summary(stopped=False):
    """What the run did, from the status files (the failures table the run wrote last)."""
    tables = [LAYOUT.table("failures"), LAYOUT.ingest_failures()]
    written = [t for t in tables if t.is_file()] or tables
    failures = max(written, key=lambda t: t.stat().st_mtime if t.is_file() else 0)
    html = LAYOUT.html_report() if failures == LAYOUT.table("failures") else None
    return run_summary(LAYOUT, list(STUDIES), failures, stopped=stopped, report=html)


onstart:
    for warning in RUN_WARNINGS:
        logger.warning(f"medsam3 warning: {warning}")


onsuccess:
    logger.info(summary())


onerror:
    logger.error(summary(stopped=True))
