"""Shared io pieces: concept names that cannot collide, path scrubbing, environment errors."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from io_helpers import REAL_CT_SERIES

from medsam3.io.common import (
    ReadError,
    concept_slug,
    environment_cause,
    scrub_identifiers,
    scrub_paths,
)
from medsam3.io.read import read_source


def test_concept_names_are_distinct_bounded_and_plain_for_plain_phrases():
    phrases = [
        "lung",
        "Lung",
        "lung!",
        "LUNG",
        " lung",
        "left kidney",
        "left_kidney",
        "left  kidney",
        "t-cell",
        "t cell",
        "lung--55bb8969",
        "Leber",
        "rein gauche é",
        "肝臓",
        "!!!",
        "nodule " * 60,
        "nodule " * 61,
    ]
    names = [concept_slug(p) for p in phrases]
    assert len(set(names)) == len(phrases), dict(zip(phrases, names, strict=True))
    assert names[:2] == ["lung", f"lung--{names[1][-8:]}"]
    assert concept_slug("left kidney") == "left_kidney" and concept_slug("t-cell") == "t-cell"
    for name in names:
        assert len(name) <= 58 and name == name.strip("-_")
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in name), name
    assert concept_slug("肝臓").startswith("concept--")
    assert concept_slug("Lung") == concept_slug("Lung")  # stable: resume finds the label again


def test_whole_paths_are_scrubbed_and_nothing_else():
    source = "/data/2"
    msg = f"{source}: found 2 DICOM series; run `medsam3 discover {source} -o c.csv`"
    assert scrub_paths(msg, [source]) == (
        "<source>: found 2 DICOM series; run `medsam3 discover <source> -o c.csv`"
    )
    listed = "/data/DOE JOHN PHI12345/IM1.dcm"  # a space: only hidden whole when named
    msg = f"<list>: 1 listed file(s) do not exist (first: {listed}); mask has 1/2 of 20240512"
    out = scrub_paths(msg, [listed])
    assert "DOE" not in out and "PHI12345" not in out and "1/2 of 20240512" in out
    unknown = "OSError: [Errno 5] Input/output error: '/mnt/DOE_JOHN/IM2.dcm' and/or 3/4"
    assert scrub_paths(unknown) == "OSError: [Errno 5] Input/output error: '<source>' and/or 3/4"
    kept = "OSError: [Errno 28] No space left on device: '/scratch/run1/zarr/.s-1.zarr.tmp-1'"
    assert scrub_paths(kept, keep=["/scratch/run1"]) == kept
    assert "<source>" in scrub_paths(kept, keep=["/scratch/run"])  # a prefix is not a folder
    # dates are real dates only: a 20000000-voxel count stays a number
    assert scrub_identifiers("20000000 voxels on 19991231") == "20000000 voxels on <date>"


def _real_errors(tmp_path) -> dict[str, BaseException]:
    """Exceptions raised by real operations, not built by hand."""
    found = {}
    try:
        with open("/dev/full", "w") as fh:  # every write: no space left on device
            fh.write("x")
    except OSError as exc:
        found["no space"] = exc
    try:
        np.empty(2**62, np.uint8)
    except MemoryError as exc:
        found["memory"] = exc
    try:
        read_source(tmp_path / "missing.nii.gz")
    except ReadError as exc:
        found["missing input"] = exc
    try:
        try:
            open(tmp_path / "absent.dcm", "rb")  # noqa: SIM115
        except FileNotFoundError as inner:
            raise ReadError("absent.dcm: not a readable DICOM file") from inner
    except ReadError as exc:
        found["unreadable input"] = exc
    try:
        try:
            with open("/dev/full", "w") as fh:
                fh.write("x")
        except OSError as inner:
            raise ReadError("wrapped by a reader") from inner
    except ReadError as exc:
        found["no space, wrapped"] = exc
    return found


def test_environment_errors_are_told_from_input_errors(tmp_path):
    errors = _real_errors(tmp_path)
    assert set(errors) == {
        "no space",
        "memory",
        "missing input",
        "unreadable input",
        "no space, wrapped",
    }
    assert environment_cause(errors["no space"]).errno == errno.ENOSPC
    assert isinstance(environment_cause(errors["memory"]), MemoryError)
    assert environment_cause(errors["no space, wrapped"]).errno == errno.ENOSPC
    assert environment_cause(errors["missing input"]) is None
    assert environment_cause(errors["unreadable input"]) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_an_unreadable_source_is_an_environment_error(tmp_path):
    path = tmp_path / "ct.dcm"
    path.write_bytes((REAL_CT_SERIES / "2392").read_bytes())
    path.chmod(0)
    with pytest.raises(OSError) as err:
        read_source(path)
    assert environment_cause(err.value).errno == errno.EACCES
