"""Records that cross the Snakemake boundary, settings from the validated config, the layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.utils import validate

from medsam3.pipeline.cohort import Shard, Study, StudyRef, shard_studies
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.settings import (
    DEMO_SALT,
    IngestSettings,
    JobResources,
    ReportSettings,
    SegmentSettings,
    ground_truth_table,
    run_warnings,
    typed_config,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _validated(config: dict) -> dict:
    validate(config, SCHEMA, set_default=True)
    return config


def test_study_references_and_shards_survive_rule_params_without_paths():
    studies = [
        Study(f"s{i}", f"/d/DOE_{i}.nii.gz", "ct" if i else None, ("liver",), row=i, source_key="k")
        for i in range(5)
    ]
    refs = [s.ref() for s in studies]
    shards = shard_studies(refs, 2)
    assert list(shards) == ["shard-0000", "shard-0001", "shard-0002"]
    assert shards["shard-0002"].studies == (refs[4],)
    for shard in shards.values():
        assert Shard.from_params(shard.to_params()) == shard
        assert "DOE" not in str(shard.to_params())
    assert StudyRef.from_params(refs[0].to_params()) == refs[0]
    assert refs[1].source_only().concepts == () and refs[1].source_stamp == "missing"


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
    assert JobResources.from_config(config, "segment") == JobResources(8000, 120, "auto")


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


def test_ground_truth_defaults_to_none_for_a_user_cohort_and_the_demo_setup_warns():
    demo_gt = str(REPO / "resources" / "demo" / "ground_truth.csv")
    assert ground_truth_table("auto", True, demo_gt) == demo_gt
    assert ground_truth_table("auto", False, demo_gt) == ""
    assert ground_truth_table("", True, demo_gt) == "" and ground_truth_table(None, False, "") == ""
    assert ground_truth_table("/x/gt.csv", False, demo_gt) == "/x/gt.csv"
    assert run_warnings(DEMO_SALT, True, demo_gt, demo_gt) == []
    salt, truth = run_warnings(DEMO_SALT, False, demo_gt, demo_gt)
    assert "public default 'medsam3-demo-salt'" in salt and "ground_truth is the demo" in truth
    assert run_warnings("my-secret", False, "", demo_gt) == []
    config = _validated(yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8")))
    assert config["ground_truth"] == "auto" and config["study_id_salt"] == DEMO_SALT
    segment = SegmentSettings.from_config(config, (salt,))
    assert SegmentSettings.from_params(segment.to_params()) == segment


def test_segment_jobs_ask_for_a_gpu_only_when_they_use_one():
    from medsam3.models.build import uses_gpu
    from medsam3.pipeline.settings import JobResources, ModelSettings

    auto = JobResources(8000, 120, "auto")
    assert auto.gpus(ModelSettings("sam3", "/ckpt", "", "auto")) == 1
    assert auto.gpus(ModelSettings("sam3", "/ckpt", "", "cuda:1")) == 1
    assert auto.gpus(ModelSettings("sam3", "/ckpt", "", "cpu")) == 0
    compact = int(uses_gpu("compact", "auto"))  # 1 once the compact backend runs on CUDA
    assert auto.gpus(ModelSettings("compact", "", "", "auto")) == compact
    assert JobResources(8000, 120, 2).gpus(ModelSettings("sam3", "", "", "cpu")) == 2
    assert JobResources(4000, 30, "auto").gpus(None) == 0  # ingest and report jobs


def test_nested_config_strings_from_the_command_line_are_typed_by_the_schema():
    """snakemake --config reads nested values as strings; the schema types them back."""
    given = parse_config(['agent={mode: rules, max_rounds: 1, accept: 0.5, allow_remote: "true"}'])
    assert given["agent"]["max_rounds"] == "1"  # what Snakemake hands the workflow
    schema = yaml.safe_load(Path(SCHEMA).read_text(encoding="utf-8"))
    config = typed_config(given, schema)
    assert config["agent"] == {
        "mode": "rules",
        "max_rounds": 1,
        "accept": 0.5,
        "allow_remote": True,
    }
    minimal = {"cohort": "c", "outdir": "o", "study_id_salt": "s", "shard_size": 3}
    minimal["model"] = {"backend": "compact"}
    assert SegmentSettings.from_config(_validated(minimal | config)).agent["max_rounds"] == 1
    off = typed_config(parse_config(["agent={mode: off, max_rounds: two, accept: '[0'}"]), schema)
    assert off["agent"] == {"mode": "off", "max_rounds": "two", "accept": "[0"}  # schema refuses


def test_key_slice_spacing_reaches_the_compact_backend_only():
    """model.key_spacing_mm (typed from --config, validated) is a compact load_model option;
    the schema's default is the backend's own; sam3 never gets it."""
    from medsam3.models.compact import KEY_SPACING_MM
    from medsam3.pipeline.infer import _model_kwargs

    schema = yaml.safe_load(Path(SCHEMA).read_text(encoding="utf-8"))
    given = typed_config(parse_config(["model={backend: compact, key_spacing_mm: 0}"]), schema)
    minimal = {"cohort": "c", "outdir": "o", "study_id_salt": "s", "shard_size": 3}
    model = SegmentSettings.from_config(_validated(minimal | given)).model
    assert model.key_spacing_mm == 0 and _model_kwargs(model)["key_spacing_mm"] == 0
    unset = SegmentSettings.from_config(_validated(minimal | {"model": {"backend": "compact"}}))
    assert _model_kwargs(unset.model)["key_spacing_mm"] == KEY_SPACING_MM
    sam3 = {"model": {"backend": "sam3", "checkpoint": "/ckpt", "key_spacing_mm": 2.0}}
    assert "key_spacing_mm" not in _model_kwargs(
        SegmentSettings.from_config(_validated(minimal | sam3)).model
    )
    bad = minimal | {"model": {"backend": "compact", "key_spacing_mm": -1}}
    with pytest.raises(Exception, match="minimum"):
        _validated(bad)


def test_precision_reaches_each_backend_in_its_own_terms():
    """model.precision: compact gets ``precision`` (autocast), sam3 ``dtype`` (its weights);
    "auto" passes nothing, and the schema refuses a precision it does not know."""
    from medsam3.pipeline.infer import _model_kwargs

    minimal = {"cohort": "c", "outdir": "o", "study_id_salt": "s", "shard_size": 3}

    def kwargs(model: dict) -> dict:
        return _model_kwargs(SegmentSettings.from_config(_validated(minimal | model)).model)

    assert kwargs({"model": {"backend": "compact", "precision": "bfloat16"}})["precision"] == (
        "bfloat16"
    )
    sam3 = kwargs({"model": {"backend": "sam3", "checkpoint": "/c", "precision": "bfloat16"}})
    assert sam3["dtype"] == "bfloat16" and "precision" not in sam3
    auto = kwargs({"model": {"backend": "compact"}})
    assert "precision" not in auto and "dtype" not in auto
    with pytest.raises(Exception, match="float16"):
        _validated(minimal | {"model": {"backend": "compact", "precision": "float16"}})
