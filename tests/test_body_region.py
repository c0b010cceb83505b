"""Body regions from DICOM headers and the field of view, and the default concepts they pick."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from medsam3.io.body_region import region_of_dicom, region_of_words
from medsam3.io.image import MedImage
from medsam3.io.read import read_source
from medsam3.models.concepts import vocabulary_table
from medsam3.pipeline.cohort import Study, concepts_for

DEFAULTS = {"ct": ["liver"], "ct/head": ["brain"], "mri": ["brain"], "*": []}


def test_region_from_body_part_then_descriptions():
    ds = pydicom.Dataset()
    ds.BodyPartExamined = "ABDOMENPELVIS"
    assert region_of_dicom(ds) == ("abdomen", "dicom")
    ds = pydicom.Dataset()
    ds.SeriesDescription = "5/5mm Plain"
    ds.StudyDescription = "CT HEAD W/O"
    assert region_of_dicom(ds) == ("head", "description")
    assert region_of_dicom(pydicom.Dataset()) == (None, None)
    assert region_of_words("Thorax 1.0 B31f") == "chest" and region_of_words("L-SPINE") == "spine"
    assert region_of_words("LSPINE") == "spine" and region_of_words("5/5mm Plain") is None


def test_a_head_ct_slice_gets_head_defaults(tmp_path):
    """pydicom's CT slice (no BodyPartExamined, 245 mm across) is a head by its field of view."""
    image = read_source(get_testdata_file("CT_small.dcm"))  # 128 x 0.66 mm: 85 mm across
    assert image.body_region is None
    head = read_source(_head_ct(tmp_path))
    assert (head.body_region, head.body_region_source) == ("head", "field of view")
    assert any("field of view" in w for w in head.warnings)
    study = Study("s", str(tmp_path), None, ())
    assert concepts_for(study, "ct", DEFAULTS, head.body_region) == ["brain"]
    assert concepts_for(study, "ct", DEFAULTS, None) == ["liver"]
    assert concepts_for(study, "ct", DEFAULTS, "pelvis") == ["liver"]  # no ct/pelvis: ct's
    assert concepts_for(study, "us", DEFAULTS, "head") == []
    given = Study("s", str(tmp_path), None, ("spleen",))
    assert concepts_for(given, "ct", DEFAULTS, "head") == ["spleen"]


def _head_ct(folder):
    """pydicom's CT slice with a 245 mm field of view, as the demo's head CT (512 x 0.479 mm)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelSpacing = [1.914, 1.914]  # 128 pixels x 1.914 mm = 245 mm
    path = folder / "head.dcm"
    ds.save_as(path)
    return path


def test_pixel_images_are_not_measured_in_mm():
    png = MedImage(np.zeros((4, 4)), "image", (1.0, 1.0), (0, 0), (1, 0, 0, 1),
                   spacing_unit="pixel")  # fmt: skip
    assert not png.has_physical_spacing


def test_concepts_lists_corrected_body_parts():
    parts = {r["concept"]: r["body_part"] for r in vocabulary_table()}
    assert parts["lung"] == parts["left rib 6"] == "chest"
    assert parts["t11 vertebra"] == "spine" and parts["liver"] == "abdomen"
    assert parts["left autochthonous muscle"] == "back" and parts["nucleus"] == "multi-organ"
    assert parts["fetal head"] == "fetus"
