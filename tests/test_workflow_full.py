"""Full Snakemake runs: segmentation, exports, reports, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import snakemake_cmd
from PIL import Image

from medsam3.io.zarr_store import is_complete, read_label
from medsam3.pipeline.demo import write_dicom_series

pytestmark = pytest.mark.slow


def _cohort(root, n_images: int):
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_images):
        img = np.full((64, 80), 30, np.uint8)
        img[20 + i : 44 + i, 25:55] = 200  # a bright blob
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(data / f"img{i}.png")
        rows.append((f"img-{i}", f"data/img{i}.png", "xray", "lung"))
    vol = np.zeros((3, 48, 40), np.int16)
    vol[:, 10:30, 8:30] = 60
    series = sitk.GetImageFromArray(vol)
    series.SetSpacing((0.8, 0.9, 3.0))
    series.SetOrigin((5.0, -3.0, 12.0))
    series.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # rows run anterior, as from a RAS NIfTI
    write_dicom_series(series, data / "ct_series", modality="CT")
    rows.append(("ct", "data/ct_series", "", "liver"))
    rows.append(("broken", "data/missing.png", "", ""))
    pd.DataFrame(rows, columns=["study_id", "path", "modality", "concepts"]).to_csv(
        root / "cohort.csv", index=False
    )
    return root / "cohort.csv"


def _cmd(root, out, *extra):
    config = [f"cohort={root / 'cohort.csv'}", f"outdir={out}", "ground_truth=", "shard_size=1"]
    return snakemake_cmd("--config", *config, "export=[nifti,png,dicom-seg]", *extra)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    _cohort(root, n_images=2)
    out = root / "out"
    proc = subprocess.run(
        _cmd(root, out),
        cwd=root,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    full_run_output[out] = proc.stderr
    return root, out


full_run_output: dict = {}  # outdir -> the run's Snakemake output (stderr)


def test_reports_cover_every_study(full_run):
    _, out = full_run
    studies = pd.read_parquet(out / "reports" / "studies.parquet").set_index("study_id")
    assert studies.loc["broken", "status"] == "failed"
    assert (studies.drop(index="broken")["status"] == "ok").all()
    segments = pd.read_parquet(out / "reports" / "segments.parquet")
    concept_rows = segments[segments["level"] == "concept"]
    assert sorted(concept_rows["study_id"]) == ["ct", "img-0", "img-1"]
    assert concept_rows["presence"].between(0, 1).all()
    failures = pd.read_parquet(out / "reports" / "failures.parquet")
    assert list(failures["study_id"]) == ["broken"]
    prov = pd.read_parquet(out / "reports" / "provenance.parquet")
    assert len(prov) == 4 and prov["backend"].eq("compact").all()
    page = (out / "reports" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Concepts</h2>" in page and "<h2>Failures by stage</h2>" in page
    found = (concept_rows["voxels"] > 0).groupby(concept_rows["concept"]).sum()
    for concept in ("lung", "liver"):  # listed whether or not the model found them
        n = (concept_rows["concept"] == concept).sum()
        assert f"<td>{concept}</td><td>{n}</td><td>{found[concept]}</td>" in page
    assert "<td>broken</td><td>ingest</td><td><source> does not exist" not in page  # escaped
    assert "<td>broken</td><td>ingest</td><td>&lt;source&gt; does not exist" in page
    assert page.count('<img class="th"') == 3  # a thumbnail for every segmented study
    by_study = concept_rows.set_index("study_id")
    assert by_study.loc["img-0", "spacing_unit"] == "pixel"
    assert pd.isna(by_study.loc["img-0", "area_mm2"])  # a PNG has no physical spacing
    assert by_study.loc["ct", "spacing_unit"] == "mm" and by_study.loc["ct", "volume_ml"] >= 0
    assert not segments.query("level == 'instance'")["score"].isna().any()  # every one scored
    assert (concept_rows["n_instances"] == segments[segments["level"] == "instance"]
            .groupby("study_id").size().reindex(concept_rows["study_id"], fill_value=0)
            .to_numpy()).all()  # fmt: skip


def test_the_terminal_shows_each_study_and_the_summary(full_run):
    _, out = full_run
    stderr = full_run_output[out]
    for sid in ("img-0", "img-1", "ct"):
        assert f"segment {sid} (shard-" in stderr and "study 1 of 1): ok in " in stderr
    assert "Studies ok: 3 of 4; failed: 1." in stderr
    assert "  failed: broken (ingest): <source> does not exist" in stderr
    assert f"Report: {out / 'reports' / 'report.html'}" in stderr


def test_pipeline_stores_open_in_an_ngff_reader(full_run):
    """ome-zarr-py reads the stores: scale from the spacing (z, y, x), units, label names."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, out = full_run
    for sid, scale, unit, label in (
        ("ct", [3.0, 0.9, 0.8], "millimeter", "liver"),
        ("img-0", [1.0, 1.0], None, "lung"),
    ):
        nodes = list(Reader(parse_url(str(out / "zarr" / f"{sid}.zarr")))())
        meta = {n.metadata.get("name"): n.metadata for n in nodes if n.metadata.get("name")}
        assert set(meta) == {sid, label}
        got = meta[sid]["coordinateTransformations"][0][0]["scale"]
        np.testing.assert_allclose(got, scale, atol=1e-4)
        assert {a.get("unit") for a in meta[sid]["axes"]} == {unit}
        assert "color" in meta[label]  # an NGFF image-label (colours per instance id)


def test_cli_and_pipeline_masks_are_identical(full_run):
    """`medsam3 segment` on a study's source writes the pipeline's masks and counts."""
    root, out = full_run
    cli = [sys.executable, "-m", "medsam3.cli", "segment"]
    for sid, source, concept, modality, files in (
        ("img-0", "data/img0.png", "lung", ["--modality", "xray"], ["lung.png", "lung.nii.gz"]),
        ("ct", "data/ct_series", "liver", [], ["liver.nii.gz"]),
    ):
        run = subprocess.run(
            [*cli, source, "-p", concept, "-o", f"cli-{sid}", "--json", *modality],
            cwd=root, capture_output=True, encoding="utf-8", timeout=900,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        for name in files:
            mine, theirs = root / f"cli-{sid}" / name, out / "masks" / sid / name
            np.testing.assert_array_equal(_decoded(mine), _decoded(theirs))
        summary = json.loads(run.stdout)["concepts"][concept]
        segments = pd.read_parquet(out / "reports" / "segments.parquet")
        row = segments.query("study_id == @sid and level == 'concept'").iloc[0]
        assert summary["n_instances"] == row["n_instances"]
        assert summary["n_components"] == row["n_components"]
        assert summary["voxels"] == row["voxels"]


def _decoded(path):
    """A mask file's voxels (PNG or NIfTI)."""
    if path.suffix == ".png":
        return np.asarray(Image.open(path))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_snakemake_report_holds_the_figures(full_run):
    root, out = full_run
    run = subprocess.run(
        _cmd(root, out, "--report", str(root / "snakemake_report.zip")),
        cwd=root, capture_output=True, encoding="utf-8", timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(root / "snakemake_report.zip").namelist()
    for figure in ("sizes.png", "dice.png", "overlays.png", "report.html"):
        assert any(n.endswith(figure) for n in names), names


def test_report_renders_in_a_headless_browser(full_run, tmp_path):
    """Chromium (through selenium) loads report.html: no console error, every image decoded,
    a screenshot that is not blank."""
    from browser import open_page

    _, out = full_run
    with open_page(out / "reports" / "report.html", tmp_path) as page:
        assert page.errors == [], page.errors
        assert page.images_ok, "an image of the report did not decode"
        pixels = page.screenshot.astype(float)
        assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and pictures
        assert "medsam3 report" in page.title


def test_exports_keep_source_geometry(full_run):
    root, out = full_run
    label, attrs = read_label(out / "zarr" / "ct.zarr", "liver")
    assert attrs["concept"] == "liver" and label.dtype == np.uint8
    assert attrs["display_order"] == {"transpose": False, "flip_rows": True, "flip_cols": True}
    nifti = sitk.ReadImage(str(out / "masks" / "ct" / "liver.nii.gz"))
    np.testing.assert_allclose(nifti.GetSpacing(), (0.8, 0.9, 3.0), atol=1e-4)
    np.testing.assert_allclose(nifti.GetOrigin(), (5.0, -3.0, 12.0), atol=1e-4)
    np.testing.assert_allclose(nifti.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti), label)
    png = np.asarray(Image.open(out / "masks" / "img-0" / "lung.png"))
    assert png.shape == (64, 80)
    seg = hd.seg.segread(out / "masks" / "ct" / "liver.dcm")
    sources = {pydicom.dcmread(p).SOPInstanceUID for p in (root / "data" / "ct_series").iterdir()}
    referenced = {
        ref.ReferencedSOPInstanceUID
        for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == sources


def _stored_labels(out) -> dict[str, int]:
    """study_id -> mtime of its stored label's metadata, for studies segmented so far.

    A label still being staged (a hidden sibling, swapped into place when complete) is not
    stored: pathlib's glob matches hidden names, and a kill can land while one exists."""
    found = {}
    for meta in out.glob("zarr/*.zarr/labels/*/zarr.json"):
        if not meta.parent.name.startswith("."):
            found[meta.parents[2].name.removesuffix(".zarr")] = meta.stat().st_mtime_ns
    return found


def test_sigkill_then_rerun_finishes_without_recomputing(tmp_path):
    root = tmp_path
    _cohort(root, n_images=4)
    out = root / "out"
    proc = subprocess.Popen(
        _cmd(root, out),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 900
    while time.time() < deadline and not _stored_labels(out):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the Snakemake process and its running jobs
    proc.wait()
    stored = _stored_labels(out)
    assert stored, "no study was segmented before the kill"
    subprocess.run(_cmd(root, out, "--unlock"), cwd=root, capture_output=True, timeout=300)
    rerun = subprocess.run(
        _cmd(root, out, "--rerun-incomplete"),
        cwd=root,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=1800,
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert {k: v for k, v in _stored_labels(out).items() if k in stored} == stored
    records = [
        r
        for p in (out / "status" / "segment").glob("*.json")
        for r in json.loads(p.read_text(encoding="utf-8"))["studies"]
    ]
    assert all(r["computed"] == [] for r in records if r["study_id"] in stored)
    segments = pd.read_parquet(out / "reports" / "segments.parquet")
    concept_rows = segments[segments["level"] == "concept"]
    assert sorted(concept_rows["study_id"]) == ["ct", "img-0", "img-1", "img-2", "img-3"]
    assert not concept_rows.duplicated(["study_id", "concept"]).any()
    for sid in ("ct", "img-0", "img-3"):
        assert is_complete(out / "zarr" / f"{sid}.zarr")
