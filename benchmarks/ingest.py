"""Ingest benchmark: medsam3's DICOM read + Zarr write against SimpleITK's series reader.

Generates a CT-like int16 DICOM series (default 512 x 512 x 300, one file per slice, shuffled
names) in a work folder once, then times
  (a) SimpleITK ImageSeriesReader (GDCM file ordering + read), the baseline, and
  (b) ``medsam3.io.read.read_source`` + ``medsam3.io.zarr_store.write_study``,
and prints seconds, MB/s (of decoded voxels), the store's size and the ratio (b)/(a); the goal
is <= 1.5. ``--codec cname:level:shuffle`` (e.g. ``zstd:1:shuffle``) writes with another Blosc
codec instead of the stores' own (``zarr_store.compressor``), to compare speed and size.

Usage:
    python benchmarks/ingest.py [--slices 300] [--size 512] [--repeat 3] [--workdir DIR]
                                [--codec lz4:5:bitshuffle]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from zarr.codecs import BloscCodec, BloscShuffle

from medsam3.io import zarr_store
from medsam3.io.read import read_source
from medsam3.io.zarr_store import write_study


def phantom_slice(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A CT-like slice of stored values (HU + 1024): air, a body ellipse, organs, noise."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1] = 40.0
    hu[((xx - 0.1) / 0.12) ** 2 + ((yy + 0.05 * np.sin(k / 20)) / 0.09) ** 2 < 1] = 60.0
    hu[(xx / 0.05) ** 2 + ((yy - 0.2) / 0.05) ** 2 < 1] = 700.0
    hu += rng.normal(0, 15, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)


def write_series(folder: Path, n: int, size: int) -> None:
    """Write ``n`` CT slices of ``size`` x ``size`` with random names into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, names = np.random.default_rng(0), random.Random(0)
    study, series = generate_uid(), generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
        ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.976, 0.976], 1.25
        ds.InstanceNumber = n - k
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = phantom_slice(size, k, rng).tobytes()
        ds.save_as(folder / f"{names.getrandbits(48):012x}", enforce_file_format=True)


def baseline(folder: Path) -> np.ndarray:
    """SimpleITK: GDCM series file ordering and ImageSeriesReader."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayViewFromImage(reader.Execute())


def ingest(folder: Path, store: Path) -> tuple[float, float]:
    """medsam3: read_source + write_study; returns (read seconds, write seconds)."""
    t0 = time.perf_counter()
    image = read_source(folder)
    shutil.rmtree(store, ignore_errors=True)  # time a fresh write, not the old store's removal
    t1 = time.perf_counter()
    write_study(store, image)
    return t1 - t0, time.perf_counter() - t1


def best_of(repeat: int, fn, *args) -> tuple[float, object]:
    """Minimum wall time over ``repeat`` runs of fn(*args) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def use_codec(spec: str) -> None:
    """Make ``write_study`` compress with the Blosc codec ``cname:level:shuffle``."""
    cname, level, shuffle = spec.split(":")
    codec = BloscCodec(cname=cname, clevel=int(level), shuffle=BloscShuffle[shuffle])
    zarr_store.compressor = lambda: codec


def main() -> None:
    """Parse arguments, generate the series if needed, time both paths and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "medsam3-bench"
    )
    parser.add_argument("--codec", help="cname:level:shuffle, e.g. zstd:1:shuffle")
    args = parser.parse_args()
    if args.codec:
        use_codec(args.codec)
    folder = args.workdir / f"ct_{args.size}x{args.size}x{args.slices}"
    if not folder.is_dir() or len(list(folder.iterdir())) != args.slices:
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        write_series(folder, args.slices, args.size)
        print(f"generated {args.slices} slices in {time.perf_counter() - t0:.1f} s: {folder}")
    megabytes = args.slices * args.size**2 * 2 / 1e6
    store = args.workdir / "bench.zarr"
    t_base, _ = best_of(args.repeat, baseline, folder)
    runs = [ingest(folder, store) for _ in range(args.repeat)]
    t_read, t_write = min(r for r, _ in runs), min(w for _, w in runs)
    t_ours = min(r + w for r, w in runs)
    stored = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6
    print(f"volume: {args.slices} x {args.size} x {args.size} int16 = {megabytes:.0f} MB")
    print(f"(a) SimpleITK ImageSeriesReader : {t_base:6.2f} s  {megabytes / t_base:6.1f} MB/s")
    print(f"(b) read_source + write_study   : {t_ours:6.2f} s  {megabytes / t_ours:6.1f} MB/s")
    codec = zarr_store.compressor()
    print(
        f"    read_source {t_read:.2f} s, write_study {t_write:.2f} s, store {stored:.0f} MB "
        f"(Blosc {codec.cname.value}:{codec.clevel}:{codec.shuffle.value})"
    )
    print(f"ratio (b)/(a): {t_ours / t_base:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
