"""Status files: one shape for every stage, read back as written; records become failure rows."""

from __future__ import annotations

import numpy as np

from medsam3.io.image import ImageInfo, MedImage
from medsam3.pipeline.status import (
    JobStatus,
    StudyStatus,
    failure_rows,
    hide_source_path,
    read_status,
    study_records,
    write_status,
)


def test_failed_studies_and_exports_become_rows(tmp_path):
    ingest = JobStatus("ingest", "a", [StudyStatus("a", "ingest", "failed", "truncated file")])
    shard = JobStatus(
        "segment",
        "shard-0000",
        [
            StudyStatus("b", "segment", export_errors=["liver: ValueError: no FoR"]),
            StudyStatus("c", "segment", "failed", "RuntimeError: out of memory"),
            StudyStatus("d", "segment", "skipped", "ingest failed"),
        ],
        model_load_s=1.5,
    )
    paths = [write_status(tmp_path / "a.json", ingest), write_status(tmp_path / "s.json", shard)]
    assert [r.study_id for r in study_records(paths[1:])] == ["b", "c", "d"]
    rows = failure_rows(study_records(paths))
    assert [(r["study_id"], r["stage"]) for r in rows] == [
        ("a", "ingest"),
        ("b", "export"),
        ("c", "segment"),
    ]
    assert rows[1]["error"] == "liver: ValueError: no FoR" and rows[0]["time"]


def test_status_round_trip_keeps_the_image_description(tmp_path):
    image = MedImage(
        np.zeros((3, 4, 5), np.int16),
        "volume",
        (0.5, 0.6, 2.0),
        (1, 2, 3),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        modality="ct",
        warnings=["gap"],
    )
    record = StudyStatus("v", "ingest", image=ImageInfo.of(image), seconds=0.1)
    path = write_status(tmp_path / "v.json", JobStatus("ingest", "v", [record]))
    back = read_status(path)
    assert back == JobStatus("ingest", "v", [record])
    assert back.studies[0].image.frame_count == 3 and back.studies[0].image.shape == (3, 4, 5)


def test_source_paths_are_hidden_unless_allowed():
    msg = "ReadError: /data/DOE^JOHN/ct.nii.gz is truncated"
    assert "DOE" not in hide_source_path(msg, "/data/DOE^JOHN/ct.nii.gz")
    assert hide_source_path(msg, "/data/DOE^JOHN/ct.nii.gz", report_paths=True) == msg
