"""The body region a study images, for the default concepts of its modality and region.

In order, the first that answers:

1. DICOM ``BodyPartExamined`` (source "dicom"), e.g. HEAD, CHEST, ABDOMEN, PELVIS, LSPINE;
2. words of the DICOM ``SeriesDescription``, ``StudyDescription`` or ``ProtocolName``
   (source "description"), e.g. "CT BRAIN", "THORAX", "ABD/PEL";
3. for CT and MR only, the field of view (source "field of view"): a plane between 150 and
   280 mm across (its longer side, pixel spacing x pixels) is a head; adult chest, abdomen
   and pelvis scans are 320-500 mm across. A weak rule (a knee or a child's trunk fits it
   too), so it is recorded as a warning; set the cohort row's concepts to override.

Only the region ("head", "neck", "chest", "abdomen", "pelvis", "spine", "breast",
"extremity") is kept, never the description text (it may name a patient or a doctor).
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from medsam3.io.image import MedImage

REGIONS = ("head", "neck", "chest", "abdomen", "pelvis", "spine", "breast", "extremity")
_WORDS = {
    "head": ("HEAD", "BRAIN", "SKULL", "CRANIUM", "CEREBRUM", "NEURO", "ORBIT", "SINUS", "IAC"),
    "neck": ("NECK", "THYROID", "LARYNX"),
    "chest": ("CHEST", "THORAX", "THORACIC_CAVITY", "LUNG", "LUNGS", "HEART", "CARDIAC", "CTPA"),
    "abdomen": ("ABDOMEN", "ABD", "LIVER", "KIDNEY", "RENAL", "PANCREAS", "ABDOMENPELVIS"),
    "pelvis": ("PELVIS", "PEL", "PROSTATE", "BLADDER", "HIP", "UTERUS"),
    "spine": ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "VERTEBRA"),
    "breast": ("BREAST", "MAMMO", "MAMMOGRAPHY"),
    "extremity": ("KNEE", "SHOULDER", "ELBOW", "WRIST", "HAND", "ANKLE", "FOOT", "LEG", "ARM"),
}
_LOOKUP = {word: region for region, words in _WORDS.items() for word in words}
HEAD_FOV_MM = (150.0, 280.0)


def region_of_words(text: str | None) -> str | None:
    """The first region one of whose words appears in ``text`` (case-insensitive), else None.

    Args:
        text: a BodyPartExamined value or a free-text description.

    Returns:
        One of ``REGIONS`` or None.
    """
    if not text:
        return None
    compact = str(text).upper().replace(" ", "")
    if compact in _LOOKUP:  # BodyPartExamined values such as "ABDOMENPELVIS"
        return _LOOKUP[compact]
    for word in re.split(r"[^A-Z]+", str(text).upper()):
        if word in _LOOKUP:
            return _LOOKUP[word]
    return None


def region_of_dicom(ds: Dataset) -> tuple[str | None, str | None]:
    """(region, source) from a DICOM header: BodyPartExamined, then the descriptions.

    Args:
        ds: a dataset of the series (its first file).

    Returns:
        (region, "dicom" or "description"), or (None, None) when the header does not say.
    """
    region = region_of_words(ds.get("BodyPartExamined"))
    if region:
        return region, "dicom"
    for keyword in ("SeriesDescription", "StudyDescription", "ProtocolName"):
        region = region_of_words(ds.get(keyword))
        if region:
            return region, "description"
    return None, None


def region_of_field_of_view(image: MedImage) -> str | None:
    """ "head" for a CT or MR plane 150-280 mm across with physical spacing, else None.

    Args:
        image: the read image (modality set).

    Returns:
        "head" or None.
    """
    if image.modality not in ("ct", "mri") or not image.has_physical_spacing:
        return None
    y, x = image.spatial_shape[-2:]
    fov = max(x * float(image.spacing[0]), y * float(image.spacing[1]))
    return "head" if HEAD_FOV_MM[0] <= fov <= HEAD_FOV_MM[1] else None


def fill_body_region(image: MedImage) -> None:
    """Set ``image.body_region`` from the field of view when the header gave none (a warning
    records the guess).

    Args:
        image: the read image; changed in place.
    """
    if image.body_region:
        return
    region = region_of_field_of_view(image)
    if region:
        image.body_region, image.body_region_source = region, "field of view"
        image.warnings.append(
            f"body region guessed as {region!r} from the field of view (its default concepts "
            "apply); set the cohort table's concepts to override"
        )
