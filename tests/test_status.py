"""Status records become failures rows: failed studies and failed exports."""

from __future__ import annotations

from medsam3.pipeline.status import failure_rows, study_records


def test_failed_studies_and_exports_become_rows():
    ingest = {"study_id": "a", "stage": "ingest", "status": "failed", "error": "truncated file"}
    shard = {
        "stage": "segment",
        "studies": [
            {"study_id": "b", "status": "ok", "export_errors": ["liver: ValueError: no FoR"]},
            {"study_id": "c", "status": "failed", "error": "RuntimeError: out of memory"},
            {"study_id": "d", "status": "skipped", "error": "ingest failed"},
        ],
    }
    assert [r["study_id"] for r in study_records([shard])] == ["b", "c", "d"]
    rows = failure_rows([ingest, shard])
    assert [(r["study_id"], r["stage"]) for r in rows] == [
        ("a", "ingest"),
        ("b", "export"),
        ("c", "segment"),
    ]
    assert rows[1]["error"] == "liver: ValueError: no FoR" and rows[0]["time"]
