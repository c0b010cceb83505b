"""Records that cross the Snakemake boundary, settings from the validated config, the layout."""

from __future__ import annotations

from pathlib import Path

import yaml
from snakemake.utils import validate

from medsam3.pipeline.cohort import Shard, Study, shard_studies
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.settings import (
    IngestSettings,
    JobResources,
    ReportSettings,
    SegmentSettings,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _validated(config: dict) -> dict:
    validate(config, SCHEMA, set_default=True)
    return config


def test_study_and_shard_survive_rule_params():
    studies = [Study(f"s{i}", f"/d/{i}.nii.gz", "ct" if i else None, ("liver",)) for i in range(5)]
    shards = shard_studies(studies, 2)
    assert list(shards) == ["shard-0000", "shard-0001", "shard-0002"]
    assert shards["shard-0002"].studies == (studies[4],)
    for shard in shards.values():
        assert Shard.from_params(shard.to_params()) == shard
    assert Study.from_params(studies[0].to_params()) == studies[0]
    assert studies[1].source_only() == Study("s1", "/d/1.nii.gz", "ct", ())


def test_minimal_config_gets_its_defaults_from_the_schema():
    config = _validated(
        {
            "cohort": "c.csv",
            "outdir": "out",
            "study_id_salt": "salt",
            "model": {"backend": "compact"},
            "shard_size": 3,
        }
    )
    segment = SegmentSettings.from_config(config)
    assert segment.model.device == "auto" and segment.model.checkpoint == ""
    assert segment.export == ("nifti", "png") and segment.default_concepts == {}
    assert IngestSettings.from_config(config).report_paths is False
    report = ReportSettings.from_config(config, ground_truth="")
    assert report.nsd_tolerance_mm == 2.0 and report.dask == {}
    assert JobResources.from_config(config, "segment") == JobResources(4000, 30, 0)


def test_shipped_config_round_trips_through_params():
    config = _validated(yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8")))
    segment = SegmentSettings.from_config(config)
    assert SegmentSettings.from_params(segment.to_params()) == segment
    # the provenance config hash is taken over these params: same keys as config["model"]
    assert segment.to_params()["model"] == config["model"]
    ingest = IngestSettings.from_config(config)
    assert IngestSettings.from_params(ingest.to_params()) == ingest
    assert JobResources.from_config(config, "segment") == JobResources(8000, 120, 0)


def test_layout_gives_rule_patterns_and_job_paths_alike():
    layout = Layout("out")
    assert layout.status("ingest", "{study}") == Path("out/status/ingest/{study}.json")
    pattern = str(layout.status("segment", "{shard}"))
    assert pattern.format(shard="shard-0001") == str(layout.status("segment", "shard-0001"))
    assert layout.store("a") == Path("out/zarr/a.zarr")
    assert layout.table("failures") == Path("out/reports/failures.parquet")
    assert layout.ingest_failures() != layout.table("failures")
    assert layout.log("segment", "{shard}") == Path("out/logs/segment/{shard}.log")
    assert layout.log("report") == Path("out/logs/report.log")
