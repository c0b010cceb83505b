"""The agent in the pipeline: segments columns, the agent trace part and table, raw labels,
resume, report.html's review list, and ``medsam3 segment``'s summary (real compact model on a
real CT slice of the shared data set; skipped without it)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import medsam3
from medsam3.agent.segmenter import AgentSegmenter
from medsam3.io.zarr_store import list_labels, read_label
from medsam3.models.base import ConceptResult
from medsam3.pipeline.aggregate import studies_rows
from medsam3.pipeline.cohort import Study, load_cohort
from medsam3.pipeline.infer import RAW_SUFFIX, _store_result, segment_study
from medsam3.pipeline.ingest import ingest_study
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.segment_file import segment_file
from medsam3.pipeline.settings import IngestSettings, ModelSettings, SegmentSettings
from medsam3.reports.html import write_html_report
from medsam3.reports.schemas import AGENT_TRACE_SCHEMA, SEGMENTS_SCHEMA, STUDIES_SCHEMA
from medsam3.reports.tables import aggregate_parts, write_parquet_atomic

CONCEPTS = ("liver", "liver tumor")
AGENT = {"mode": "rules", "max_rounds": 1, "accept": 0.99}


@pytest.fixture(scope="module")
def agent() -> AgentSegmenter:
    return medsam3.load_model("compact", agent=AGENT)


@pytest.fixture(scope="module")
def slice_png(shared_data):
    return shared_data / "images/liver_tumor_3d/liver_tumor_3d_10019_119.png"


def _settings(outdir, agent: dict | None) -> SegmentSettings:
    model = ModelSettings("compact", "", "", "cpu")
    return SegmentSettings(str(outdir), model, ("png",), {}, False, (), agent)


def test_a_study_segmented_with_the_agent(agent, slice_png, tmp_path):
    study = Study("liver-slice", str(slice_png), "ct", CONCEPTS)
    assert ingest_study(study, IngestSettings(str(tmp_path), False)).status == "ok"
    layout = Layout(tmp_path)
    record = segment_study(study, agent, _settings(tmp_path, AGENT))
    assert record.status == "ok" and record.computed == list(CONCEPTS)
    rows = pq.read_table(layout.segments_part("liver-slice")).to_pylist()
    concept_rows = [r for r in rows if r["level"] == "concept"]
    assert all(0 <= r["critic_score"] <= 1 and r["review"] is not None for r in concept_rows)
    assert all(r["critic_score"] is None for r in rows if r["level"] == "instance")
    trace = pq.read_table(layout.agent_trace_part("liver-slice"))
    assert trace.schema.names == AGENT_TRACE_SCHEMA.names
    assert {r["concept"] for r in trace.to_pylist()} == set(CONCEPTS)
    assert [r for r in trace.to_pylist() if r["action"] == "stop"]
    store = layout.store("liver-slice")
    for phrase in CONCEPTS:
        _, attrs = read_label(store, phrase.replace(" ", "_"))
        assert attrs["agent"] == "rules"
        changed = attrs["agent_action"] != "model"
        assert (phrase.replace(" ", "_") + RAW_SUFFIX in list_labels(store)) == changed

    again = segment_study(study, agent, _settings(tmp_path, AGENT))
    assert again.computed == []  # resumed: same phrase, backend, checkpoint and agent mode
    off = segment_study(study, agent.base, _settings(tmp_path, None))
    assert off.computed == list(CONCEPTS)  # the agent's labels are not the backend's own
    assert not layout.agent_trace_part("liver-slice").exists()
    rows = pq.read_table(layout.segments_part("liver-slice")).to_pylist()
    assert all(r["critic_score"] is None and r["review"] is None for r in rows)


def test_a_changed_result_keeps_the_raw_label(agent, tmp_path, slice_png):
    study = Study("raw", str(slice_png), "ct", ("liver",))
    ingest_study(study, IngestSettings(str(tmp_path), False))
    store = Layout(tmp_path).store("raw")
    refined = np.zeros((384, 384), np.uint8)
    refined[100:150, 100:150] = 1
    raw = refined.copy()
    raw[10:20, 10:20] = 1
    extra = {"critic_score": 0.8, "agent_rounds": 1, "review": False, "agent_action": "drop"}
    extra |= {"agent_trace": [], "agent_raw_mask": raw, "agent_raw_presence": 0.7}
    _store_result(store, ConceptResult("liver", refined, 0.9, extra=extra), agent)
    label, attrs = read_label(store, "liver")
    raw_label, raw_attrs = read_label(store, "liver" + RAW_SUFFIX)
    assert np.array_equal(label > 0, refined > 0) and np.array_equal(raw_label > 0, raw > 0)
    assert raw_attrs["raw"] and raw_attrs["presence"] == 0.7 and attrs["critic_score"] == 0.8
    # a rerun in which the agent leaves the mask alone removes the now stale raw label
    kept = {"critic_score": 0.9, "agent_rounds": 0, "review": False, "agent_trace": []}
    _store_result(store, ConceptResult("liver", refined, 0.9, extra=kept), agent)
    assert list_labels(store) == ["liver"]
    assert json.loads((store / "labels" / "zarr.json").read_text())["attributes"]["ome"][
        "labels"
    ] == ["liver"]


def test_report_lists_results_flagged_for_review(agent, slice_png, tmp_path):
    study = Study("flagged", str(slice_png), "ct", CONCEPTS)
    ingest_study(study, IngestSettings(str(tmp_path), False))
    layout = Layout(tmp_path)
    segment_study(study, agent, _settings(tmp_path, AGENT))
    layout.reports.mkdir(parents=True)
    aggregate_parts([layout.segments_part("flagged")], layout.table("segments"), SEGMENTS_SCHEMA)
    aggregate_parts(
        [layout.agent_trace_part("flagged")], layout.table("agent_trace"), AGENT_TRACE_SCHEMA
    )
    html = write_html_report(layout.reports, layout.html_report()).read_text(encoding="utf-8")
    assert "Flagged for review by the agent" in html
    flagged = [
        r
        for r in pq.read_table(layout.table("segments")).to_pylist()
        if r["level"] == "concept" and r["review"]
    ]
    for r in flagged:
        assert f"<td>{r['concept']}</td>" in html


def test_medsam3_segment_summary_carries_the_critic(agent, slice_png, tmp_path):
    summary = segment_file(slice_png, list(CONCEPTS), tmp_path, agent, modality="ct")
    for phrase in CONCEPTS:
        entry = summary["concepts"][phrase]
        assert 0 <= entry["critic_score"] <= 1 and isinstance(entry["review"], bool)
        assert entry["agent_trace"][-1]["action"] == "stop"


def test_a_cohort_question_is_planned_segmented_and_answered(agent, slice_png, tmp_path):
    table = tmp_path / "cohort.csv"
    table.write_text(
        "path,study_id,modality,concepts,question\n"
        f"{slice_png},asked,ct,,is there a liver tumour?\n",
        encoding="utf-8",
    )
    (study,) = load_cohort(table)
    assert study.concepts == ("liver tumor",) and study.question == "is there a liver tumour?"
    out = tmp_path / "out"
    ingest = ingest_study(study, IngestSettings(str(out), False))
    record = segment_study(study, agent.base, _settings(out, None))
    assert record.question == study.question
    assert record.answer.startswith(("yes: liver tumor found", "no: liver tumor not found"))
    layout = Layout(out)
    layout.reports.mkdir(parents=True)
    rows = studies_rows([ingest], [record])
    write_parquet_atomic(rows, layout.table("studies"), STUDIES_SCHEMA)
    assert rows[0]["answer"] == record.answer
    html = write_html_report(layout.reports, layout.html_report()).read_text(encoding="utf-8")
    assert "<h2>Questions</h2>" in html and "is there a liver tumour?" in html
