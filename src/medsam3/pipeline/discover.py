"""Find the studies in a folder tree and write a cohort table (``medsam3 discover``).

DICOM files are found by content (any names, any nesting, other files mixed in) and grouped
by Study/Series Instance UID into one row per series. A series that is all of one folder's
DICOM files gets that folder as its path, a one-file series that file; any other series gets a
``.dcmlist`` file (absolute file paths, one per line) written into ``list_dir``. Multi-frame
files (cine loops) and planar single frames (x-ray, photographs) that share a series become
one row per file. NIfTI, NRRD, MetaImage, PNG, JPEG, TIFF and video files get one row each,
and a folder named ``frames`` holding only 2D images is one video row.
The table carries no UIDs or patient data: study ids are salted hashes
(``medsam3.pipeline.cohort.derive_study_id``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from medsam3.io.atomic import write_text_atomic
from medsam3.io.common import ReadError
from medsam3.io.dicom import dicom_kind, is_dicom_file, map_modality, series_key
from medsam3.io.dicom_load import load_dataset
from medsam3.io.formats import IMAGE_SUFFIXES, SITK_SUFFIXES, suffix_of
from medsam3.io.video import VIDEO_SUFFIXES
from medsam3.pipeline.cohort import DEFAULT_SALT, derive_study_id
from medsam3.types import PathLikeStr

log = logging.getLogger(__name__)
COLUMNS = ["path", "study_id", "modality", "kind", "n_files", "warnings"]
NO_MODALITY = "modality not recorded in the file; set the modality column (else it is guessed)"


def _file_row(path: Path, salt: str) -> dict:
    """One table row for a non-DICOM image, volume or video file, or a video frame folder."""
    suffix = suffix_of(path)
    kind, warnings, n_files = "image", [NO_MODALITY], 1
    if path.is_dir():
        kind, n_files = "video", sum(1 for _ in path.iterdir())
    elif suffix in VIDEO_SUFFIXES:
        kind = "video"
    elif suffix in SITK_SUFFIXES:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            kind = "volume" if reader.GetDimension() == 3 else "image"
        except RuntimeError:
            warnings.append("header unreadable by SimpleITK; reading will likely fail")
    key = str(path)
    return _row(key, derive_study_id(key, salt), "", kind, n_files, warnings)


def _row(path: str, study_id: str, modality: str, kind: str, n: int, warnings: list) -> dict:
    """A table row as a dict with the COLUMNS keys."""
    return dict(zip(COLUMNS, [path, study_id, modality, kind, n, "; ".join(warnings)], strict=True))


def _scan(folder: Path) -> tuple[list[Path], dict, Counter]:
    """Walk ``folder``; return (other image files, DICOM series -> [(path, header)], DICOM
    files per folder). Hidden folders and ``*.zarr`` stores are skipped."""
    files, series, per_folder = [], defaultdict(list), Counter()
    known = (*SITK_SUFFIXES, *IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and ".zarr" not in d)
        paths = [Path(dirpath) / name for name in sorted(filenames)]
        if _is_frame_folder(Path(dirpath), paths):
            files.append(Path(dirpath))
            continue
        for path in paths:
            if suffix_of(path) in known:
                files.append(path)
            elif is_dicom_file(path) and path.stat().st_size > 0:
                _add_dicom(path, series, per_folder)
    return files, series, per_folder


def _is_frame_folder(folder: Path, paths: list[Path]) -> bool:
    """A folder named "frames" holding only 2D images is one video (read_source agrees)."""
    images = [p for p in paths if suffix_of(p) in IMAGE_SUFFIXES]
    return folder.name.lower() == "frames" and bool(images) and len(images) == len(paths)


def _add_dicom(path: Path, series: dict, per_folder: Counter) -> None:
    """Read one DICOM header and file it under its series (non-image DICOM is skipped)."""
    try:
        ds, _ = load_dataset(path, header_only=True)
    except ReadError:
        per_folder[path.parent] += 1  # unreadable: counted, so its folder is not used as path
        log.warning("skipping unreadable DICOM file %s", path)
        return
    if "Rows" not in ds:
        return  # DICOMDIR, structured reports, presentation states
    per_folder[path.parent] += 1
    series[series_key(ds)].append((path, ds))


def _series_rows(key: tuple, members: list, per_folder: Counter, salt: str, lists: Path) -> list:
    """Rows for one DICOM series: one per file for cine/planar files, else one per series."""
    _, ds = members[0]
    modality = map_modality(ds.get("Modality")) or ""
    warnings = [] if modality else [NO_MODALITY]
    uid_key = "/".join(key)
    if len(members) > 1 and dicom_kind(ds, 1) in ("image", "video"):
        rows = []
        for path, item in members:
            sid = derive_study_id(f"{uid_key}/{item.get('SOPInstanceUID', path)}", salt)
            rows.append(_row(str(path), sid, modality, dicom_kind(item, 1), 1, warnings))
        return rows
    study_id = derive_study_id(uid_key, salt)
    paths = sorted(p for p, _ in members)
    folders = {p.parent for p in paths}
    if len(paths) == 1:
        location = str(paths[0])
    elif len(folders) == 1 and per_folder[paths[0].parent] == len(paths):
        location = str(paths[0].parent)
    else:
        lists.mkdir(parents=True, exist_ok=True)
        listing = lists / f"{study_id}.dcmlist"
        write_text_atomic(listing, "".join(f"{p}\n" for p in paths))
        location = str(listing)
    kind = dicom_kind(ds, len(members))
    return [_row(location, study_id, modality, kind, len(members), warnings)]


def discover(
    folder: PathLikeStr, salt: str = DEFAULT_SALT, list_dir: Path | None = None
) -> pd.DataFrame:
    """Scan a folder tree for studies.

    Args:
        folder: root folder (any layout; non-image files are ignored).
        salt: study-id salt (config ``study_id_salt``).
        list_dir: where ``.dcmlist`` files go for series that do not fill one folder
            (default ``./dcmlists``; created only when needed).

    Returns:
        DataFrame with columns path (absolute: folder, .dcmlist or file), study_id, modality
        (lower-case, "" when unknown), kind (image/volume/video), n_files, warnings ("; "-joined),
        sorted by path. No UIDs or patient data.

    Raises:
        ReadError: ``folder`` is not a directory.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ReadError(f"{folder} is not a folder; give the folder that holds the images")
    lists = Path(list_dir) if list_dir is not None else Path.cwd() / "dcmlists"
    files, series, per_folder = _scan(root)
    rows = [_file_row(p, salt) for p in files]
    for key, members in series.items():
        rows += _series_rows(key, members, per_folder, salt, lists.resolve())
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("path", ignore_index=True)


def main_discover(
    folder: PathLikeStr, out_csv: PathLikeStr, salt: str = DEFAULT_SALT
) -> pd.DataFrame:
    """Discover studies under ``folder`` and write the cohort CSV.

    Args:
        folder: root folder to scan.
        out_csv: output CSV path; ``.dcmlist`` files go to ``<out_csv stem>_dcmlists/`` next
            to it.
        salt: study-id salt.

    Returns:
        The table that was written.
    """
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = discover(folder, salt=salt, list_dir=out.parent / f"{out.stem}_dcmlists")
    table.to_csv(out, index=False)
    log.info("discover: %d studies written to %s", len(table), out)
    return table
