"""Discovery of studies in a messy folder tree, and consistency with ``read_source``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from io_helpers import write_dicom_series, write_us_cine
from PIL import Image

from medsam3.io.read import ReadError, read_source
from medsam3.pipeline.cohort import derive_study_id
from medsam3.pipeline.discover import COLUMNS, discover, main_discover


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str, int]]]:
    """A cohort folder: a clean series folder, two series sharing a folder, a series split over
    two folders, two cine loops of one series, NIfTI/PNG files and clutter.

    Returns:
        (root, {label: (study_uid, series_uid, n_files)}).
    """
    root = tmp_path_factory.mktemp("cohort") / "data"
    z = np.zeros
    uids = {}
    for label, folder, n in [("a", "patA/ct", 4), ("b", "mixed", 3), ("c", "mixed", 2)]:
        study, series = f"1.2.826.0.1.{len(uids) + 1}", f"1.2.826.0.1.{len(uids) + 1}.5"
        write_dicom_series(
            root / folder, z((n, 6, 7), np.int16), study_uid=study, series_uid=series
        )
        uids[label] = (study, series, n)
    for part, offset in (("split/p1", 0.0), ("split/p2", 5.0)):
        write_dicom_series(root / part, z((2, 6, 7), np.int16), origin=(0, 0, offset),
                           study_uid="1.2.826.0.1.9", series_uid="1.2.826.0.1.9.5")  # fmt: skip
    uids["d"] = ("1.2.826.0.1.9", "1.2.826.0.1.9.5", 4)
    (root / "cines").mkdir()
    for name in ("loop1.dcm", "loop2.dcm"):
        write_us_cine(root / "cines" / name, np.full((3, 8, 10), 7, np.uint8), series_uid="1.2.3.4")
    write_us_cine(root / "cines" / "other_series.dcm", np.zeros((2, 8, 10), np.uint8))
    (root / "patA" / "ct" / "README.txt").write_text("clutter")
    (root / "other").mkdir()
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.float32), np.eye(4)), root / "other/v.nii.gz")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "other" / "photo.png")
    (root / "other" / "notes.csv").write_text("a,b\n")
    (root / "clip" / "frames").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / f"clip/frames/f_{k}.png")
    return root, uids


def test_rows_paths_and_ids(tree, tmp_path):
    root, uids = tree
    table = discover(root, salt="pepper", list_dir=tmp_path / "lists")
    assert list(table.columns) == COLUMNS
    assert len(table) == 10  # 4 series, 2 cine files, a one-file series, NIfTI, PNG, frames
    by_id = table.set_index("study_id")
    for label, (study, series, n) in uids.items():
        row = by_id.loc[derive_study_id(f"{study}/{series}", "pepper")]
        assert (row.kind, row.modality, row.n_files) == ("volume", "ct", n)
        if label == "a":
            assert row.path == str((root / "patA" / "ct").resolve())
        else:
            assert Path(row.path).parent == (tmp_path / "lists").resolve()
            assert Path(row.path).suffix == ".dcmlist"
    cines = table[table.kind == "video"]
    names = ["frames", "loop1.dcm", "loop2.dcm", "other_series.dcm"]
    assert sorted(Path(p).name for p in cines.path) == names
    assert set(cines.modality) == {"ultrasound", ""} and cines.study_id.nunique() == 4
    files = table[table.modality == ""]
    assert sorted(files.kind) == ["image", "video", "volume"]
    assert files[files.kind == "video"].n_files.item() == 3
    assert all("modality not recorded" in w for w in files.warnings)


def test_every_row_reads_with_the_discovered_kind(tree, tmp_path):
    root, uids = tree
    table = discover(root, list_dir=tmp_path / "lists")
    for row in table.itertuples():
        image = read_source(row.path)
        assert image.kind == row.kind, row.path
        if row.kind == "volume" and row.modality == "ct":
            assert len(image.array) == row.n_files
    mixed = [p for p in table.path if p.endswith(".dcmlist")]
    assert all(not read_source(p).warnings for p in mixed)  # lists hold only their series


def test_salt_changes_ids_and_runs_are_stable(tree, tmp_path):
    root, _ = tree
    one = discover(root, salt="a", list_dir=tmp_path / "l1")
    two = discover(root, salt="a", list_dir=tmp_path / "l1")
    other = discover(root, salt="b", list_dir=tmp_path / "l2")
    assert list(one.study_id) == list(two.study_id)
    assert not set(one.study_id) & set(other.study_id)


def test_main_discover_writes_csv(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out" / "cohort.csv"
    table = main_discover(root, out, salt="s")
    back = pd.read_csv(out, keep_default_na=False)
    assert list(back.columns) == COLUMNS and list(back.study_id) == list(table.study_id)
    assert (tmp_path / "out" / "cohort_dcmlists").is_dir()


def test_not_a_folder_raises(tmp_path):
    with pytest.raises(ReadError, match="is not a folder"):
        discover(tmp_path / "missing")
