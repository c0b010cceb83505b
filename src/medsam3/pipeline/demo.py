"""The embedded demo cohort, built from real medical data that installs with the package.

Sources (no download at run time):
- nilearn's MNI152 T1 template (2 mm) and brain mask -> a DICOM MR series and a NIfTI volume,
  both with brain-mask ground truth;
- pydicom-data: a chest radiograph (CR) as PNG, a CT slice, an enhanced multi-frame MR, and
  frames of the colour echocardiography cine (as a DICOM cine and as an MP4);
- one deliberately truncated DICOM file, so the demo shows failure recording.
The DICOM files carry made-up patient identifiers to show that none reach any output.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import av
import data_store  # the pydicom-data package
import numpy as np
import pydicom
import SimpleITK as sitk
from nilearn import datasets
from PIL import Image

from medsam3.io.atomic import write_text_atomic
from medsam3.io.dicom import decode_pixels

DEMO_SLICES = 12  # axial slices kept from MNI152 (every 2nd slice around the centre)
DEMO_FRAMES = 8  # echo cine frames kept
FAKE_PATIENT = {
    "PatientName": "DEMO^PATIENT",
    "PatientID": "DEMO-0001",
    "PatientBirthDate": "19700101",
}

COHORT = [  # study_id, path (relative to the table), modality, concepts
    ("demo-mr-series", "data/mr_brain_series", "", "brain"),
    ("demo-mni152-nifti", "data/mni152_t1.nii.gz", "mri", "brain"),
    ("demo-chest-xray", "data/chest_xray.png", "xray", "lung;heart"),
    ("demo-ct-slice", "data/ct_slice.dcm", "", ""),
    ("demo-enhanced-mr", "data/emri_small.dcm", "", "brain"),
    ("demo-echo-cine", "data/echo_cine.dcm", "", "left ventricle"),
    ("demo-echo-mp4", "data/echo_clip.mp4", "ultrasound", "left ventricle"),
    ("demo-truncated", "data/truncated.dcm", "", ""),
]
GROUND_TRUTH = [  # study_id, concept, mask (relative to the table), label_value
    ("demo-mr-series", "brain", "data/mr_brain_series_brain_mask.nii.gz", 1),
    ("demo-mni152-nifti", "brain", "data/mni152_brain_mask.nii.gz", 1),
]


def _pydicom_data_file(name: str) -> Path:
    return Path(data_store.__file__).parent / "data" / name


def _mni152() -> tuple[sitk.Image, sitk.Image]:
    """MNI152 T1 and brain mask (2 mm), cropped to DEMO_SLICES axial slices, as SimpleITK images."""
    t1 = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    z0 = t1.shape[2] // 2 - DEMO_SLICES
    images = []
    for img, dtype in ((t1, np.int16), (mask, np.uint8)):
        data = np.asarray(img.get_fdata())[:, :, z0 : z0 + 2 * DEMO_SLICES : 2]
        data = data * 1000.0 if dtype == np.int16 else data  # template is scaled to [0, 1]
        arr = np.transpose(data, (2, 1, 0)).astype(dtype)  # nibabel (i,j,k) -> sitk (z,y,x)
        out = sitk.GetImageFromArray(arr)
        affine = img.affine
        origin_ras = affine[:3, :3] @ np.array([0, 0, z0]) + affine[:3, 3]
        out.SetSpacing((2.0, 2.0, 4.0))
        out.SetOrigin((-origin_ras[0], -origin_ras[1], origin_ras[2]))  # RAS -> LPS
        out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        images.append(out)
    return images[0], images[1]


def write_dicom_series(image: sitk.Image, folder: Path, modality: str = "MR") -> list[Path]:
    """Write a 3D SimpleITK image as a single-frame DICOM series (one file per slice).

    Args:
        image: int16 volume with spacing/origin/direction.
        folder: output folder (created).
        modality: DICOM Modality.

    Returns:
        The written file paths, ordered by slice index.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()
    series_uid = pydicom.uid.generate_uid()
    study_uid = pydicom.uid.generate_uid()
    common = {
        "0020|0052": pydicom.uid.generate_uid(),  # FrameOfReferenceUID
        "0008|0060": modality,
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0010|0010": FAKE_PATIENT["PatientName"],
        "0010|0020": FAKE_PATIENT["PatientID"],
        "0010|0030": FAKE_PATIENT["PatientBirthDate"],
        "0008|103e": "medsam3 demo series",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
        "0018|0050": f"{image.GetSpacing()[2]:.4f}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in common.items():
            plane.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", pydicom.uid.generate_uid())
        paths.append(folder / f"IM{k:04d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(plane)
    return paths


def _write_echo(data_dir: Path) -> None:
    """Echo cine: DEMO_FRAMES frames as an uncompressed multi-frame US DICOM and as an MP4."""
    src = pydicom.dcmread(_pydicom_data_file("color3d_jpeg_baseline.dcm"))
    frames = np.ascontiguousarray(src.pixel_array[:DEMO_FRAMES])  # (t, y, x, 3) RGB
    ds = src.copy()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "RGB"
    ds.NumberOfFrames = DEMO_FRAMES
    ds.PlanarConfiguration = 0
    ds.PixelData = frames.tobytes()
    for key, value in FAKE_PATIENT.items():
        setattr(ds, key, value)
    ds.save_as(data_dir / "echo_cine.dcm", enforce_file_format=True)
    with av.open(str(data_dir / "echo_clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_2d(data_dir: Path) -> None:
    path = _pydicom_data_file("RG1_UNCR.dcm")  # MONOCHROME1: inverted, as the reader does
    xray = decode_pixels(pydicom.dcmread(path), path, []).astype(np.float32)
    xray = (255 * (xray - xray.min()) / max(np.ptp(xray), 1)).astype(np.uint8)
    Image.fromarray(xray).resize((512, 544), Image.LANCZOS).save(data_dir / "chest_xray.png")
    ct = pydicom.dcmread(_pydicom_data_file("693_UNCR.dcm"))
    for key, value in FAKE_PATIENT.items():
        setattr(ct, key, value)
    ct.save_as(data_dir / "ct_slice.dcm")
    shutil.copy(_pydicom_data_file("emri_small.dcm"), data_dir / "emri_small.dcm")
    raw = (data_dir / "ct_slice.dcm").read_bytes()
    (data_dir / "truncated.dcm").write_bytes(raw[: len(raw) // 3])


def build_demo(out_dir: str | Path) -> Path:
    """Build the demo cohort's data under ``{out_dir}/data`` and its tables in ``out_dir``.

    Args:
        out_dir: the demo folder (``Layout.demo()``: ``{outdir}/demo`` in a workflow run;
            never the source tree).

    Returns:
        Path of the written cohort table ``{out_dir}/cohort.csv``.
    """
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    t1, mask = _mni152()
    sitk.WriteImage(t1, str(data_dir / "mni152_t1.nii.gz"))
    sitk.WriteImage(mask, str(data_dir / "mni152_brain_mask.nii.gz"))
    write_dicom_series(t1, data_dir / "mr_brain_series")
    sitk.WriteImage(mask, str(data_dir / "mr_brain_series_brain_mask.nii.gz"))
    _write_2d(data_dir)
    _write_echo(data_dir)
    write_tables(out_dir)
    return out_dir / "cohort.csv"


def write_tables(out_dir: str | Path) -> None:
    """Write the demo's cohort.csv and ground_truth.csv (paths relative to ``out_dir``).

    A table whose content is already there is left untouched (written atomically otherwise).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (
        ("cohort.csv", ["study_id", "path", "modality", "concepts"], COHORT),
        ("ground_truth.csv", ["study_id", "concept", "mask", "label_value"], GROUND_TRUTH),
    ):
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != buffer.getvalue():
            write_text_atomic(path, buffer.getvalue())
