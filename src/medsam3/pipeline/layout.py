"""The output layout: every path under ``{outdir}``, for the rules and the pipeline code alike.

No other module joins paths under the output folder. The rules (``workflow/rules/*.smk``) build
their ``output:`` and ``log:`` patterns here with Snakemake wildcards in place of ids
(``layout.status("ingest", "{study}")``); the jobs rebuild the same paths from the ids::

    {outdir}/zarr/{study_id}.zarr                     Zarr store: image + labels/<concept_slug>
    {outdir}/masks/{study_id}/                        exported masks (io.masks)
    {outdir}/status/{stage}/{job}.json                job status (pipeline.status)
    {outdir}/status/report.json                       timing of the report job
    {outdir}/parts/segments/{study_id}.parquet        a study's segments rows
    {outdir}/parts/provenance/{shard}.parquet         a shard's provenance row
    {outdir}/parts/agent_trace/{study_id}.parquet     a study's agent trace rows (agent on)
    {outdir}/reports/{table}.parquet, report.html     the reports (reports.schemas.TABLE_FILES)
    {outdir}/reports/figures/{name}.png               the report's figures (snakemake --report)
    {outdir}/reports/ingest_failures.parquet          failures of the ``ingest`` target
    {outdir}/logs/{group}/{name}.log                  one log per job
    {outdir}/train/{name}.safetensors                 trained concept heads
    {outdir}/demo/                                    the demo cohort (tables, data/) when it runs
    {outdir}/.medsam3.lock                            the run lock (pipeline.outdir)
    {outdir}/.snakemake/                              Snakemake's own state and run logs

The workflow runs with ``{outdir}`` as its working directory (``workdir:`` in
``workflow/rules/common.smk``), so Snakemake keeps its state beside the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medsam3.reports.schemas import TABLE_FILES


@dataclass(frozen=True)
class Layout:
    """Paths under one output folder.

    Attributes:
        root: the output folder (``config["outdir"]``; a str is accepted).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str roots (config values)

    @property
    def stores(self) -> Path:
        """The folder of the Zarr stores."""
        return self.root / "zarr"

    def store(self, study_id: str) -> Path:
        """A study's Zarr store."""
        return self.stores / f"{study_id}.zarr"

    def masks(self, study_id: str) -> Path:
        """A study's folder of exported masks."""
        return self.root / "masks" / study_id

    def status(self, stage: str, job: str) -> Path:
        """Status JSON of a job: one per study for ``ingest``, one per shard for ``segment``."""
        return self.root / "status" / stage / f"{job}.json"

    def report_timing(self) -> Path:
        """Timing record of the report job."""
        return self.root / "status" / "report.json"

    def segments_part(self, study_id: str) -> Path:
        """A study's rows of the segments table."""
        return self.root / "parts" / "segments" / f"{study_id}.parquet"

    def provenance_part(self, shard: str) -> Path:
        """A shard's row of the provenance table."""
        return self.root / "parts" / "provenance" / f"{shard}.parquet"

    def agent_trace_part(self, study_id: str) -> Path:
        """A study's rows of the agent trace table (written when the agent is on)."""
        return self.root / "parts" / "agent_trace" / f"{study_id}.parquet"

    def provenance_parts(self) -> list[Path]:
        """The provenance parts written so far, sorted."""
        return sorted((self.root / "parts" / "provenance").glob("*.parquet"))

    @property
    def reports(self) -> Path:
        """The reports folder."""
        return self.root / "reports"

    def table(self, name: str) -> Path:
        """A report table: studies, segments, metrics, failures, provenance or agent_trace."""
        return self.reports / TABLE_FILES[name][0]

    def html_report(self) -> Path:
        """The HTML summary of the reports."""
        return self.reports / "report.html"

    def report_figures(self) -> Path:
        """The report's figures as PNGs (sizes, dice, overlays), for ``snakemake --report``."""
        return self.reports / "figures"

    def ingest_failures(self) -> Path:
        """Failures table of the ``ingest`` target (the full report writes ``failures``)."""
        return self.reports / "ingest_failures.parquet"

    def log(self, group: str, name: str | None = None) -> Path:
        """A job's log: ``logs/{group}.log``, or ``logs/{group}/{name}.log``."""
        return self.root / "logs" / (f"{group}.log" if name is None else f"{group}/{name}.log")

    def trained_head(self, name: str) -> Path:
        """A concept head written by the train rules."""
        return self.root / "train" / f"{name}.safetensors"

    def demo(self) -> Path:
        """The demo cohort's folder: its tables, and ``data/`` built by rule demo_data (never
        in the source tree, so a read-only checkout runs the demo)."""
        return self.root / "demo"

    def lock(self) -> Path:
        """The lock file held by the Snakemake process of a run (``pipeline.outdir``)."""
        return self.root / ".medsam3.lock"

    def snakemake_state(self) -> Path:
        """Snakemake's state folder (metadata, locks, its run logs): ``.snakemake``."""
        return self.root / ".snakemake"

    def flat_folders(self) -> list[Path]:
        """The folders whose files are written by atomic renames and that hold no subfolders
        of studies (stores, status and part files, reports)."""
        return [
            self.stores,
            self.root / "status",
            *(self.root / "status" / stage for stage in ("ingest", "segment")),
            *(self.root / "parts" / part for part in ("segments", "provenance", "agent_trace")),
            self.reports,
        ]
