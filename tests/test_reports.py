"""Report rows on real volumes, Parquet tables, aggregation, DuckDB, HTML and provenance."""

from __future__ import annotations

import base64
import hashlib
import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

from medsam3.io.image import ImageInfo, MedImage
from medsam3.reports.figures import Overlay, thumbnail_png
from medsam3.reports.html import RunInfo, best_worst, save_figures, write_html_report
from medsam3.reports.provenance import config_hash, file_digest, git_commit, provenance_row
from medsam3.reports.tables import (
    FAILURES_SCHEMA,
    METRICS_SCHEMA,
    PROVENANCE_SCHEMA,
    SEGMENTS_SCHEMA,
    STUDIES_SCHEMA,
    aggregate_parts,
    duckdb_example,
    failure_row,
    metrics_row,
    segment_rows,
    study_row,
    write_parquet_atomic,
)


@pytest.fixture(scope="session")
def mni(tmp_path_factory) -> tuple[MedImage, sitk.Image]:
    """nilearn's MNI152 2 mm brain mask (ships with nilearn), read back through SimpleITK."""
    from nilearn.datasets import load_mni152_brain_mask

    path = tmp_path_factory.mktemp("mni") / "brain_mask.nii.gz"
    load_mni152_brain_mask(resolution=2).to_filename(path)
    img = sitk.ReadImage(str(path))
    return MedImage.from_sitk(img, "volume", modality="mri"), img


def test_segment_rows_on_mni_brain_mask(mni):
    image, img = mni
    mask = (image.array > 0).astype(np.uint8)
    rows = segment_rows("study-1", "brain", mask, image, 0.97, [0.9], "compact", "abc")
    concept = rows[0]
    n = int(mask.sum())
    voxel_ml = np.prod(img.GetSpacing()) / 1000.0
    assert concept["level"] == "concept" and concept["voxels"] == n
    assert concept["volume_ml"] == pytest.approx(n * voxel_ml)
    assert 1000 < concept["volume_ml"] < 2500  # an adult brain mask, in ml
    zyx = np.argwhere(mask)
    lo, hi = zyx.min(0)[::-1], zyx.max(0)[::-1]  # index (x, y, z)
    assert concept["bbox_voxel"] == [*lo.tolist(), *(hi + 1).tolist()]
    # physical bbox and centroid: SimpleITK's own index -> physical mapping of the file read
    corners = np.array(
        [
            img.TransformIndexToPhysicalPoint([int(v) for v in c])
            for c in np.array(np.meshgrid(*zip(lo, hi, strict=True))).reshape(3, -1).T
        ]
    )
    np.testing.assert_allclose(concept["bbox_mm"][:3], corners.min(0), atol=1e-6)
    np.testing.assert_allclose(concept["bbox_mm"][3:], corners.max(0), atol=1e-6)
    centroid = zyx.mean(0)[::-1]
    np.testing.assert_allclose(concept["centroid_voxel"], centroid, atol=1e-9)
    np.testing.assert_allclose(
        concept["centroid_mm"],
        img.TransformContinuousIndexToPhysicalPoint(centroid.tolist()),
        atol=1e-6,
    )
    assert concept["slices"] == sorted(set(zyx[:, 0].tolist()))
    assert concept["n_components"] >= 1 and concept["score"] == 0.9


def test_instances_are_the_label_ids():
    arr = np.zeros((2, 20, 30), np.uint8)
    image = MedImage(arr, "volume", (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ids = arr.copy()
    ids[0, 2:5, 2:6] = 1  # 12 voxels
    ids[1, 10:12, 20:30] = 2  # 20 voxels, not touching the first
    rows = segment_rows("s", "lesion", ids, image, 0.8, [0.7, 0.6], "compact", "d")
    assert [r["level"] for r in rows] == ["concept", "instance", "instance"]
    assert rows[0]["n_components"] == 2 and rows[0]["n_instances"] == 2
    assert [r["voxels"] for r in rows[1:]] == [12, 20]
    assert [r["score"] for r in rows[1:]] == [0.7, 0.6] and rows[0]["score"] == 0.7
    assert rows[2]["bbox_voxel"] == [20, 10, 1, 30, 12, 2]
    assert rows[1]["volume_ml"] == pytest.approx(12 * 0.5 * 0.5 * 2.0 / 1000)
    one = (ids > 0).astype(np.uint8)  # one instance in two pieces
    rows = segment_rows("s", "lesion", one, image, 0.8, [0.5], "compact", "d")
    assert rows[0]["n_instances"] == 1 and rows[0]["n_components"] == 2
    assert rows[1]["n_components"] == 2 and rows[1]["score"] == 0.5
    rows = segment_rows("s", "lesion", ids, image, 0.8, [], "compact", "d")
    assert [r["score"] for r in rows[1:]] == [0.8, 0.8]  # no scores: the presence, never null


def test_sizes_in_mm_only_for_physical_spacing():
    img = MedImage(np.zeros((10, 12), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1),
                   spacing_unit="pixel")  # fmt: skip
    m = np.zeros((10, 12), np.uint8)
    m[1:4, 2:7] = 1
    row = segment_rows("s", "polyp", m, img, 0.9, [0.9], "compact", "d")[0]
    assert (row["area_px"], row["area_mm2"], row["spacing_unit"]) == (15, None, "pixel")
    vol = MedImage(np.zeros((2, 10, 12), np.uint8), "volume", (1.0, 1.0, 1.0), (0.0,) * 3,
                   tuple(np.eye(3).ravel()), spacing_unit="pixel")  # fmt: skip
    row = segment_rows("s", "x", np.stack([m, m]), vol, 0.9, [0.9], "compact", "d")[0]
    assert (row["voxels"], row["volume_ml"]) == (30, None)
    empty = segment_rows("s", "x", np.zeros_like(m), img, 0.1, [], "compact", "d")[0]
    assert (empty["area_px"], empty["area_mm2"]) == (0, None)


def test_image_and_video_rows():
    img = MedImage(np.zeros((10, 12, 3), np.uint8), "image", (0.2, 0.5), (0.0, 0.0), (1, 0, 0, 1))
    m = np.zeros((10, 12), np.uint8)
    m[1:4, 2:7] = 1
    row = segment_rows("s", "polyp", m, img, 0.9, [0.9], "compact", "d")[0]
    assert (row["area_px"], row["volume_ml"]) == (15, None)
    assert row["area_mm2"] == pytest.approx(15 * 0.1)
    vid = MedImage(
        np.zeros((4, 6, 6), np.uint8),
        "video",
        (1.0, 1.0, 1.0),
        (0, 0, 0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        frame_rate=25.0,
    )
    vm = np.zeros((4, 6, 6), np.uint8)
    vm[1, 1:3, 1:3] = 1
    vm[3, 2:5, 2:5] = 1
    row = segment_rows("v", "polyp", vm, vid, 0.9, [], "compact", "d")[0]
    assert row["frames"] == [1, 3] and row["frame_pixels"] == [0, 4, 0, 9]
    absent = segment_rows("v", "polyp", np.zeros_like(vm), vid, 0.1, [], "compact", "d")
    assert len(absent) == 1 and absent[0]["voxels"] == 0 and absent[0]["frames"] == []
    with pytest.raises(ValueError, match="image grid"):
        segment_rows("v", "polyp", vm[:2], vid, 0.9, [], "compact", "d")


def test_schemas_have_descriptions_and_empty_tables_keep_columns(tmp_path):
    for schema in (
        STUDIES_SCHEMA,
        SEGMENTS_SCHEMA,
        METRICS_SCHEMA,
        FAILURES_SCHEMA,
        PROVENANCE_SCHEMA,
    ):
        assert all(f.metadata and f.metadata[b"description"] for f in schema)
        path = write_parquet_atomic([], tmp_path / "empty.parquet", schema)
        table = pq.read_table(path)
        assert table.num_rows == 0 and table.schema.names == schema.names


def test_study_and_failure_rows_are_scrubbed(mni, tmp_path):
    image, _ = mni
    ok = study_row("study-1", "ok", None, ImageInfo.of(image))
    bad = study_row("study-2", "failed", "bad UID 1.2.840.113619.2.55.3 on 20240131", None)
    assert "1.2.840" not in bad["error"] and "20240131" not in bad["error"]
    fail = failure_row("study-2", "ingest", ValueError("series 1.2.3.4.5 broken"))
    assert fail["error"].startswith("ValueError") and "1.2.3.4.5" not in fail["error"]
    write_parquet_atomic([ok, bad], tmp_path / "studies.parquet", STUDIES_SCHEMA)
    table = pq.read_table(tmp_path / "studies.parquet").to_pylist()
    assert table[0]["shape"] == [95, 117, 99] and table[0]["frame_count"] == 95
    assert table[1]["kind"] is None and table[1]["status"] == "failed"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "failures.parquet"
    write_parquet_atomic([failure_row("a", "ingest", "x")], target, FAILURES_SCHEMA)
    before = target.read_bytes()
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_parquet_atomic([{"study_id": 5, "stage": object()}], target, FAILURES_SCHEMA)
    with pytest.raises(ValueError, match="not in the schema"):
        write_parquet_atomic([{"study_id": "a", "typo": 1}], target, FAILURES_SCHEMA)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failures.parquet"]


def test_aggregate_many_small_parts(tmp_path):
    parts = []
    for i in range(200):
        rows = [failure_row(f"study-{i:03d}", "segment", f"error {i}-{k}") for k in range(i % 3)]
        parts.append(
            write_parquet_atomic(rows, tmp_path / "parts" / f"{i:03d}.parquet", FAILURES_SCHEMA)
        )
    out = aggregate_parts(parts, tmp_path / "failures.parquet", FAILURES_SCHEMA)
    table = pq.read_table(out)
    assert table.schema.names == FAILURES_SCHEMA.names
    assert table.num_rows == sum(i % 3 for i in range(200))
    assert sorted(table["error"].to_pylist()) == sorted(
        f"error {i}-{k}" for i in range(200) for k in range(i % 3)
    )
    assert (
        pq.read_table(aggregate_parts([], tmp_path / "none.parquet", FAILURES_SCHEMA)).num_rows == 0
    )
    with pytest.raises(FileNotFoundError, match="missing"):
        aggregate_parts([tmp_path / "nope.parquet"], tmp_path / "x.parquet", FAILURES_SCHEMA)


def _cohort_reports(tmp_path, mni) -> tuple[dict, list]:
    """Studies / segments / metrics tables from masks cut out of the MNI brain."""
    image, _ = mni
    brain = (image.array > 0).astype(np.uint8)
    studies, segments, metrics, volumes = [], [], [], {"ct": [], "mri": []}
    from medsam3.reports.metrics import segmentation_metrics

    for i in range(6):
        modality = "ct" if i % 2 else "mri"
        mask = brain.copy()
        mask[: 10 + 8 * i] = 0  # a different, real-shaped "liver" per study
        img = MedImage(
            image.array, "volume", image.spacing, image.origin, image.direction, modality=modality
        )
        studies.append(study_row(f"s{i}", "ok", None, ImageInfo.of(img)))
        rows = segment_rows(f"s{i}", "liver", mask, img, 0.9, [0.9], "compact", "d")
        segments += rows
        volumes[modality].append(rows[0]["volume_ml"])
        m = segmentation_metrics(mask[::3, ::3, ::3], brain[::3, ::3, ::3], (6.0, 6.0, 6.0))
        metrics.append(metrics_row(f"s{i}", "liver", m, 0.9, 0.5, 2.0))
    write_parquet_atomic(studies, tmp_path / "studies.parquet", STUDIES_SCHEMA)
    write_parquet_atomic(segments, tmp_path / "segments.parquet", SEGMENTS_SCHEMA)
    write_parquet_atomic(metrics, tmp_path / "metrics.parquet", METRICS_SCHEMA)
    write_parquet_atomic(
        [failure_row("s9", "ingest", "unreadable")], tmp_path / "failures.parquet", FAILURES_SCHEMA
    )
    return volumes, metrics


def test_duckdb_example_and_html_report(tmp_path, mni):
    volumes, metrics = _cohort_reports(tmp_path, mni)
    result = duckdb.sql(duckdb_example(tmp_path)).fetchall()
    assert [r[0] for r in result] == ["ct", "mri"]
    for modality, n, median in result:
        assert n == 3 and median == pytest.approx(float(np.median(volumes[modality])))
    assert all(0 < m["dice"] < 1 for m in metrics)
    cases = best_worst(tmp_path, n=1)
    assert cases[0][2] == max(m["dice"] for m in metrics)
    assert cases[-1][2] == min(m["dice"] for m in metrics)
    image, _ = mni
    plane = (image.array[45] > 0).astype(np.uint8) * 200
    overlays = [
        Overlay("best", plane, {"liver": plane > 0}, {"liver": plane > 0}),
        Overlay("worst", np.dstack([plane] * 3), {"liver": plane[::-1] > 0}),
    ]
    thumb = thumbnail_png(overlays[0])
    legend = [("#ff0000", "x")]
    run = RunInfo("2026-01-01T00:00:00+00:00", "cohort.csv", 0.5, {"s0": (thumb, legend)})
    html = write_html_report(tmp_path, tmp_path / "report.html", overlays, run).read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 4  # the thumbnail of s0, sizes, dice, overlays
    for chunk in images:
        assert base64.b64decode(chunk.split('"')[0]).startswith(b"\x89PNG")
    assert "Failures by stage" in html and "<td>ingest</td><td>1</td>" in html
    assert "<td>s9</td><td>ingest</td><td>unreadable</td>" in html  # failed ids and reasons
    assert "<td>cohort</td><td>cohort.csv</td>" in html and "presence threshold" in html
    assert "<h2>Concepts</h2>" in html and "presence min / q25 / median / q75 / max" in html
    assert html.count('<img class="th"') == 1 and "mri volumes" not in html
    saved = save_figures(tmp_path, tmp_path / "figures", overlays)
    assert sorted(saved) == ["dice", "overlays", "sizes"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in saved.values())


def test_best_and_worst_cases_are_distinct(tmp_path):
    rows = [
        metrics_row(f"s{i}", "liver", {"dice": d, "iou": d, "nsd": d, "hd95": 1.0,
                    "pred_voxels": 1, "truth_voxels": 1}, 0.9, 0.5, 2.0)
        for i, d in enumerate([0.9, 0.8, 0.7])
    ]  # fmt: skip
    write_parquet_atomic(rows, tmp_path / "metrics.parquet", METRICS_SCHEMA)
    cases = best_worst(tmp_path, n=2)
    assert [c[0] for c in cases] == ["s0", "s1", "s2"]  # three cases, none twice


def test_a_concept_found_nowhere_is_explained(tmp_path):
    img = MedImage(np.zeros((10, 12), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    empty = np.zeros((10, 12), np.uint8)
    rows = [r for i, p in enumerate([0.1, 0.3]) for r in segment_rows(
        f"s{i}", "polyp", empty, img, p, [], "compact", "d")]  # fmt: skip
    write_parquet_atomic(rows, tmp_path / "segments.parquet", SEGMENTS_SCHEMA)
    html = write_html_report(tmp_path, tmp_path / "r.html", run=RunInfo("-", "-", 0.5)).read_text()
    assert "no hit: presence below the threshold 0.50 in 2 of 2 studies (max 0.30)" in html


def test_html_report_without_tables(tmp_path):
    html = write_html_report(tmp_path, tmp_path / "r.html").read_text()
    assert "data:image/png" not in html and "none" in html


def test_provenance_row(tmp_path):
    cfg = {"b": 1, "a": [1, 2]}
    assert config_hash(cfg) == config_hash({"a": [1, 2], "b": 1}) != config_hash({"a": 1})
    assert (
        config_hash(cfg)
        == hashlib.sha256(
            json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    )
    row = provenance_row("segment/shard-0", "compact", "abc", cfg, 1_700_000_000.0, 1_700_000_090.5)
    assert row["start"] == "2023-11-14T22:13:20+00:00" and row["duration_s"] == 90.5
    assert row["package_version"] == "0.1.0" and row["torch_version"]
    write_parquet_atomic([row], tmp_path / "provenance.parquet", PROVENANCE_SCHEMA)
    assert git_commit(tmp_path) is None
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert file_digest(tmp_path / "f.bin") == hashlib.sha256(b"abc").hexdigest()
