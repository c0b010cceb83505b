"""The output folder: its check, the run lock, and removal of what killed writers left."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medsam3.io.atomic import is_temporary, remove_temporaries, temporary_name, write_text_atomic
from medsam3.io.image import MedImage
from medsam3.io.zarr_store import list_labels, write_label, write_study
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.outdir import (
    OutdirError,
    check_outdir,
    lock_outdir,
    remove_stale_files,
    remove_stale_study_files,
)


def test_an_outdir_that_is_a_file_is_refused_clearly(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(OutdirError, match="results is a file, not a folder"):
        check_outdir(tmp_path / "results")
    with pytest.raises(OutdirError, match="results is a file"):
        check_outdir(tmp_path / "results" / "run1")
    assert check_outdir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert (tmp_path / "new" / "run").is_dir()


def test_a_second_holder_of_the_lock_is_refused_with_the_first_named(tmp_path):
    layout = Layout(tmp_path)
    held = lock_outdir(layout)
    code = (
        "from medsam3.pipeline.layout import Layout\n"
        "from medsam3.pipeline.outdir import lock_outdir\n"
        f"lock_outdir(Layout({str(tmp_path)!r}))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert other.returncode != 0
    assert f"outdir {tmp_path} is in use by another medsam3 run (pid " in other.stderr
    with pytest.raises(OutdirError, match="in use"):  # another open file in this process
        lock_outdir(layout)
    held.close()  # the run ended (a killed process releases it the same way)
    lock_outdir(layout).close()


def test_staging_names_are_recognised_and_only_they_are_removed(tmp_path):
    names = [
        temporary_name(tmp_path / "liver.nii.gz").name,
        temporary_name(tmp_path / "s-1.zarr", keep_suffix=False).name,
        temporary_name(tmp_path / "s-1.zarr", "old", keep_suffix=False).name,
        ".tmp-liver-1a2b3c4d",  # label staging of earlier versions
    ]
    assert all(is_temporary(n) for n in names), names
    keep = ["liver.nii.gz", ".DS_Store", "s-1.zarr", ".hidden", "x.tmp-1a2b3c4d"]
    assert not any(is_temporary(n) for n in keep)
    for name in names + keep:
        (tmp_path / name).mkdir() if "zarr" in name else (tmp_path / name).write_text("x")
    removed = remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_stale_stores_labels_and_files_of_killed_jobs_are_removed(tmp_path):
    layout = Layout(tmp_path)
    image = MedImage(
        np.zeros((3, 8, 8), np.int16),
        "volume",
        (1.0, 1.0, 2.0),
        (0, 0, 0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    store = write_study(layout.store("s-1"), image)
    write_label(store, "liver", np.zeros((3, 8, 8), np.uint8), {"concept": "liver"})
    stale = [
        temporary_name(layout.store("s-2"), keep_suffix=False),  # a killed ingest
        temporary_name(store / "labels" / "lung", keep_suffix=False),  # a killed label write
        temporary_name(layout.masks("s-1") / "liver.nii.gz"),  # a killed export
        temporary_name(layout.masks("s-1") / "polyp" / "frame_0000.png"),
        temporary_name(layout.status("ingest", "s-3")),
        temporary_name(layout.table("studies")),
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path / "image").mkdir(parents=True) if path.name.startswith(".s-2") else path.write_text(
            "x"
        )
    write_text_atomic(layout.status("ingest", "s-1"), "{}")
    removed = remove_stale_files(layout) + remove_stale_study_files(layout, "s-1")
    assert sorted(removed) == sorted(stale)
    assert list_labels(store) == ["liver"]
    assert layout.status("ingest", "s-1").is_file() and store.is_dir()
