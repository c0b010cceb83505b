"""NIfTI/NRRD/MetaImage, 2D image and video reading through ``read_source``."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import skimage
from io_helpers import copy_real_ct_series
from PIL import Image

from medsam3.io.read import ReadError, read_source

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


def test_nifti_written_by_nibabel_has_lps_geometry(tmp_path):
    rng = np.random.default_rng(0)
    data_xyz = rng.normal(size=(9, 7, 5)).astype(np.float32)
    affine = np.array(
        [[0.0, -1.2, 0.0, 30.0], [0.8, 0.0, 0.0, -12.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]]
    )
    nib.save(nib.Nifti1Image(data_xyz, affine), tmp_path / "v.nii.gz")
    image = read_source(tmp_path / "v.nii.gz", modality="MR")
    assert image.kind == "volume" and image.modality == "mri"
    np.testing.assert_array_equal(image.array, data_xyz.transpose(2, 1, 0))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # nibabel is RAS, SimpleITK is LPS
    np.testing.assert_allclose(image.spacing, (0.8, 1.2, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.origin, lps[:, 3], atol=1e-5)
    direction = lps[:, :3] / np.array(image.spacing)
    np.testing.assert_allclose(np.reshape(image.direction, (3, 3)), direction, atol=1e-6)
    assert image.source_digest == hashlib.sha256((tmp_path / "v.nii.gz").read_bytes()).hexdigest()


def test_mni152_template_from_nilearn(tmp_path):
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    template.to_filename(tmp_path / "mni.nii.gz")
    image = read_source(tmp_path / "mni.nii.gz")
    assert image.array.shape == template.shape[::-1]
    np.testing.assert_allclose(image.spacing, template.header.get_zooms()[:3])
    assert image.modality == "mri" and any("modality guessed as 'mri'" in w for w in image.warnings)
    blank = read_source(tmp_path / "mni.nii.gz", modality=float("nan"))  # empty CSV cell
    assert blank.modality == "mri" and blank.warnings == image.warnings


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_simpleitk_formats_round_trip(tmp_path, suffix):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 3.0))
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    image = read_source(tmp_path / f"v{suffix}", modality="ct")
    np.testing.assert_array_equal(image.array, arr)
    assert image.spacing == img.GetSpacing() and image.origin == img.GetOrigin()
    assert image.direction == img.GetDirection()
    assert image.units == "HU"
    sitk.WriteImage(sitk.Cast(img + 1000, sitk.sitkUInt8), str(tmp_path / f"u{suffix}"))
    assert read_source(tmp_path / f"u{suffix}", modality="ct").units is None  # windowed, not HU
    if suffix == ".mhd":  # the digest covers the header and the separate .raw data file
        assert image.source_digest != hashlib.sha256((tmp_path / "v.mhd").read_bytes()).hexdigest()


def test_nifti_with_nans_raises(tmp_path):
    data = np.ones((4, 4, 3), np.float32)
    data[0, 0, :] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ReadError, match="3 NaN"):
        read_source(tmp_path / "nan.nii")


def test_zero_size_and_degenerate_volumes_are_refused(tmp_path):
    """SimpleITK reads a NIfTI of shape (16, 16, 0) as one slice of zeros: refused instead."""
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 0), np.int16), np.eye(4)), tmp_path / "z.nii.gz")
    with pytest.raises(ReadError, match=r"z.nii.gz: the NIfTI header gives shape \(16, 16, 0\)"):
        read_source(tmp_path / "z.nii.gz")
    (tmp_path / "z.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 0\nElementType = MET_SHORT\n"
        "ElementDataFile = LOCAL\n"
    )
    with pytest.raises(ReadError, match=r"z.mha: the image has no voxels \(shape \(0, 16, 16\)\)"):
        read_source(tmp_path / "z.mha")
    copy_real_ct_series(tmp_path / "flat", tags={"PixelSpacing": [0, 0]})
    with pytest.raises(ReadError, match=r"flat: voxel spacing \(0.0, 0.0, 2.5\) is not positive"):
        read_source(tmp_path / "flat")


def test_real_pngs_and_jpeg_from_skimage():
    camera = read_source(SKIMAGE_DATA / "camera.png")
    assert camera.kind == "image" and camera.array.shape == (512, 512)
    assert camera.array.dtype == np.uint8 and camera.spacing == (1.0, 1.0)
    assert camera.modality == "xray"  # guessed, with a warning
    assert any("modality guessed" in w for w in camera.warnings)
    ihc = read_source(SKIMAGE_DATA / "ihc.png", modality="histopathology")
    assert ihc.array.shape == (512, 512, 3) and ihc.modality == "histopathology"
    retina = read_source(SKIMAGE_DATA / "retina.jpg", modality="fundus")
    assert retina.array.ndim == 3 and retina.array.shape[2] == 3 and not retina.warnings


def test_2d_modes(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 255, (10, 12, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_source(tmp_path / "a.png")
    np.testing.assert_array_equal(image.array, rgba[..., :3])
    assert "alpha channel dropped" in image.warnings
    deep = rng.integers(0, 65535, (10, 12)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_source(tmp_path / "d.png").array, deep)
    gray = rng.integers(0, 255, (9, 11)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.tif")
    tif = read_source(tmp_path / "g.tif")
    assert tif.array.shape == (9, 11)
    np.testing.assert_array_equal(tif.array, gray)


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames (t, y, x, 3) with PyAV (lossless ffv1 in .avi, else mpeg4)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1" if path.suffix == ".avi" else "mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if path.suffix == ".avi" else "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def test_video_lossless_frames_and_rate(tmp_path):
    frames = np.random.default_rng(2).integers(0, 255, (7, 24, 32, 3)).astype(np.uint8)
    _write_video(tmp_path / "v.avi", frames, fps=12)
    image = read_source(tmp_path / "v.avi", modality="endoscopy")
    assert image.kind == "video" and image.frame_rate == pytest.approx(12.0)
    np.testing.assert_array_equal(image.array, frames)


def test_grey_looking_mp4_stays_rgb(tmp_path):
    grey = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None], 3, axis=3)
    frames = np.repeat(np.repeat(grey, 24, axis=1), 5, axis=0)
    _write_video(tmp_path / "g.mp4", frames, fps=25)
    image = read_source(tmp_path / "g.mp4")
    assert image.array.shape == (5, 24, 32, 3) and image.frame_rate == pytest.approx(25.0)
    assert image.modality == "ultrasound"  # guessed from the grey look
    assert np.abs(image.array.astype(int) - frames).mean() < 8


def test_bad_files_raise(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ReadError, match="noise.mp4: not a readable video"):
        read_source(tmp_path / "noise.mp4")
    (tmp_path / "noise.png").write_bytes(b"not a png at all")
    with pytest.raises(ReadError, match="not a readable image"):
        read_source(tmp_path / "noise.png")
    (tmp_path / "noise.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(ReadError, match="SimpleITK cannot read it"):
        read_source(tmp_path / "noise.nii.gz")
    (tmp_path / "table.xlsx").write_bytes(b"PK")
    with pytest.raises(ReadError, match="unsupported file type '.xlsx'"):
        read_source(tmp_path / "table.xlsx")


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A real 1 x 1 PNG whose header (IHDR, CRC fixed) claims width x height pixels."""
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [9000, 20000])
def test_oversized_images_are_refused_before_decoding(tmp_path, side):
    """9000^2 passes Pillow's decompression-bomb guard but not ours; 20000^2 trips both."""
    png = _png_claiming_size(tmp_path / f"huge_{side}.png", side, side)
    if side < 10000:  # Pillow opens it: our check is what refuses it
        with Image.open(png) as im:
            assert im.size == (side, side)
    with pytest.raises(ReadError, match=r"at most 67,108,864 pixels .* downsample or tile"):
        read_source(png)


def test_digest_depends_on_bytes_not_names(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "c.png")
    digests = [read_source(tmp_path / n).source_digest for n in ("a.png", "b.png", "c.png")]
    assert digests[0] == digests[1] != digests[2]


def test_frame_folder_reads_as_video_in_natural_order(tmp_path):
    frames = tmp_path / "clip" / "frames"
    frames.mkdir(parents=True)
    for k in (0, 2, 10, 1):
        Image.fromarray(np.full((6, 8, 3), k, np.uint8)).save(frames / f"frame_{k}.png")
    (tmp_path / "clip" / "video.json").write_text('{"fps": 12.5}')
    image = read_source(frames)
    assert image.kind == "video" and image.frame_rate == 12.5
    assert list(image.array[:, 0, 0, 0]) == [0, 1, 2, 10]
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(frames / "frame_11.png")
    with pytest.raises(ReadError, match="differ in size"):
        read_source(frames)


@pytest.mark.shared_data
def test_shared_data_items_of_each_kind(shared_data):
    import pandas as pd

    manifest = pd.read_csv(shared_data / "manifest.csv")
    for kind in ("image", "volume", "video"):
        rows = manifest[manifest.kind == kind]
        sizes = [sum(f.stat().st_size for f in (shared_data / p).glob("**/*")) or
                 (shared_data / p).stat().st_size for p in rows.image]  # fmt: skip
        row = rows.iloc[int(np.argmin(sizes))]
        image = read_source(shared_data / row.image, modality=row.modality)
        assert image.kind == kind and image.modality == row.modality, row.image
        assert image.array.size and len(image.source_digest) == 64
