"""A real Snakemake run of the ingest target on a small cohort with good and bad studies."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import run_snakemake
from PIL import Image

from medsam3.io.zarr_store import read_study
from medsam3.pipeline.demo import FAKE_PATIENT, write_dicom_series
from medsam3.pipeline.status import read_status

IDENTIFIERS = [FAKE_PATIENT["PatientName"], FAKE_PATIENT["PatientID"], "DEMO", "19700101"]


def _volume(seed: int, size=(20, 24, 6)) -> sitk.Image:
    arr = np.random.default_rng(seed).integers(-500, 500, size[::-1]).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    return img


def _make_cohort(root):
    data = root / "data"
    write_dicom_series(_volume(0), data / "series", modality="CT")
    write_dicom_series(_volume(1), data / "two_series", modality="CT")
    write_dicom_series(_volume(2), data / "two_series_b", modality="MR")
    for f in (data / "two_series_b").iterdir():
        shutil.move(f, data / "two_series" / f"b_{f.name}")
    sitk.WriteImage(_volume(3), str(data / "vol.nii.gz"))
    nan = sitk.GetArrayFromImage(_volume(4)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(data / "nan.nii.gz"))
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (30, 40, 3), np.uint8)).save(
        data / "photo.png"
    )
    (data / "empty.dcm").write_bytes(b"")
    (data / "noise.mp4").write_bytes(np.random.default_rng(6).bytes(5000))
    rows = [
        ("series", "data/series", "", "liver"),
        ("nifti", "data/vol.nii.gz", "ct", ""),
        ("photo", "data/photo.png", "dermoscopy", "skin lesion"),
        ("", "data/missing.nii.gz", "", ""),
        ("empty", "data/empty.dcm", "", ""),
        ("two-series", "data/two_series", "", ""),
        ("noise-video", "data/noise.mp4", "", ""),
        ("nan-volume", "data/nan.nii.gz", "", ""),
    ]
    table = pd.DataFrame(rows, columns=["study_id", "path", "modality", "concepts"])
    table.to_csv(root / "cohort.csv", index=False)
    return root / "cohort.csv"


def _snakemake(workdir, *args):
    return run_snakemake(workdir, *args, timeout=600)


@pytest.fixture(scope="module")
def ingest_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    cohort = _make_cohort(root)
    out = root / "out"
    config = ["--config", f"cohort={cohort}", f"outdir={out}", "ground_truth="]
    first = _snakemake(root, "ingest", *config)
    second = _snakemake(root, "ingest", *config)
    return out, first, second


def test_snakemake_succeeds_and_records_every_failure(ingest_run):
    out, first, _ = ingest_run
    assert first.returncode == 0, first.stderr[-3000:]
    failures = pd.read_parquet(out / "reports" / "ingest_failures.parquet")
    assert not (out / "reports" / "failures.parquet").exists()  # the full report's table
    failed = set(failures["study_id"])
    assert {"empty", "two-series", "noise-video", "nan-volume"} <= failed
    assert len(failed) == 5  # plus the missing path, under its derived id
    assert failures["stage"].eq("ingest").all()
    two = failures.set_index("study_id").loc["two-series", "error"]
    assert "2" in two and "series" in two
    assert failures["error"].str.len().gt(10).all()


def test_good_studies_have_complete_stores_with_geometry(ingest_run):
    out, _, _ = ingest_run
    series = read_study(out / "zarr" / "series.zarr")
    assert series.kind == "volume" and series.array.shape == (6, 24, 20)
    assert series.modality == "ct" and series.units == "HU"
    np.testing.assert_allclose(series.spacing, (0.7, 0.8, 2.5), atol=1e-4)
    np.testing.assert_allclose(series.origin, (10.0, -20.0, 30.0), atol=1e-4)
    photo = read_study(out / "zarr" / "photo.zarr")
    assert photo.kind == "image" and photo.array.shape == (30, 40, 3)
    assert not (out / "zarr" / "empty.zarr").exists()


def test_rerun_has_nothing_to_do(ingest_run):
    _, _, second = ingest_run
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr


def test_no_identifier_or_source_path_in_any_output(ingest_run):
    out, _, _ = ingest_run
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for ident in IDENTIFIERS + ["missing.nii.gz"]:
                assert ident.encode() not in blob, f"{ident} found in {path}"
    status = read_status(next((out / "status" / "ingest").glob("s-*.json"))).studies[0]
    assert status.status == "failed" and "<source>" in status.error
