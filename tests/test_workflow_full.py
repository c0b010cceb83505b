"""Full Snakemake runs: segmentation, exports, reports, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
    return root, out


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
    """study_id -> mtime of its stored label's metadata, for studies segmented so far."""
    found = {}
    for meta in out.glob("zarr/*.zarr/labels/*/zarr.json"):
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
