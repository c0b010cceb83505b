"""Status files: one shape for every stage, read back as written; records become failure rows."""

from __future__ import annotations

import numpy as np

from medsam3.io.image import ImageInfo, MedImage
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.status import (
    JobStatus,
    StudyStatus,
    failure_rows,
    hide_source_path,
    read_status,
    run_summary,
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


def test_a_folder_named_2_does_not_garble_the_message(tmp_path):
    source = str(tmp_path / "2")
    msg = f"{source}: found 2 DICOM series; run `medsam3 discover {source} -o cohort.csv`"
    assert hide_source_path(msg, source) == (
        "<source>: found 2 DICOM series; run `medsam3 discover <source> -o cohort.csv`"
    )


def test_files_a_dcmlist_names_are_hidden_with_it(tmp_path):
    folder = tmp_path / "DOE JOHN PHI12345 19700101" / "CT ACC98765"
    listing = tmp_path / "lists" / "s-1.dcmlist"
    listing.parent.mkdir()
    listing.write_text(f"{folder / 'IM1.dcm'}\n{folder / 'IM2.dcm'}\n")
    msg = f"{listing}: 1 listed file(s) do not exist (first: {folder / 'IM2.dcm'}); rerun"
    hidden = hide_source_path(msg, str(listing), outdir=str(tmp_path / "out"))
    assert hidden == "<source>: 1 listed file(s) do not exist (first: <source>); rerun"
    kept = f"No space left on device: '{tmp_path / 'out' / 'zarr'}'"
    assert hide_source_path(kept, str(listing), outdir=str(tmp_path / "out")) == kept


def test_the_run_summary_counts_studies_and_says_what_to_do(tmp_path):
    layout = Layout(tmp_path)
    ok = ImageInfo.of(MedImage(np.zeros((4, 5)), "image", (1, 1), (0, 0), (1, 0, 0, 1)))
    warned = ImageInfo.of(
        MedImage(np.zeros((4, 5)), "image", (1, 1), (0, 0), (1, 0, 0, 1), warnings=["w"])
    )
    for sid, record in {
        "a": StudyStatus("a", "ingest", image=ok),
        "b": StudyStatus("b", "ingest", image=warned),
        "c": StudyStatus("c", "ingest", "failed", "truncated file"),
    }.items():
        write_status(layout.status("ingest", sid), JobStatus("ingest", sid, [record]))
    shard = [StudyStatus("a", "segment"), StudyStatus("b", "segment", "failed", "no concepts")]
    write_status(layout.status("segment", "shard-0000"), JobStatus("segment", "x", shard))
    text = run_summary(layout, ["a", "b", "c", "d"], layout.table("failures"))
    assert text.startswith("medsam3: 4 studies: 3 ingested, 1 segmented, 2 failed on their")
    assert "1 not ingested yet; 1 with ingest warnings" in text and "failures.parquet" in text
    assert "Studies ok: 1 of 4; failed: 2." in text
    assert "  failed: c (ingest): truncated file" in text and "  failed: b (segment)" in text
    assert "exit status 0" in text and "Report:" not in text
    (layout.reports).mkdir(parents=True, exist_ok=True)
    layout.html_report().write_text("<html></html>")
    with_report = run_summary(layout, ["a"], layout.table("failures"), report=layout.html_report())
    assert f"Report: {layout.html_report()}" in with_report
    stopped = run_summary(layout, ["a"], layout.table("failures"), stopped=True)
    assert "Environment errors (disk full" in stopped and "run the same command again" in stopped
