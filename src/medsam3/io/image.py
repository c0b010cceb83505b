"""The one image type of medsam3, carrying geometry, and its SimpleITK conversion."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from medsam3.types import Kind


@dataclass
class MedImage:
    """An image, volume or video with its geometry.

    Attributes:
        array: voxels in SimpleITK order: (y, x[, c]) image, (z, y, x) volume, (t, y, x[, c]) video.
        kind: "image", "volume" or "video".
        spacing: SimpleITK (x, y[, z]) spacing in mm (frames count as z for video).
        origin: SimpleITK (x, y[, z]) origin in mm (LPS for DICOM).
        direction: flattened row-major direction matrix (4 or 9 floats).
        modality: lower-case modality (ct, mri, xray, ultrasound, ...) or None when unknown.
        frame_rate: frames per second for video, else None.
        units: intensity units ("HU" for CT), or None.
        warnings: reader warnings (irregular spacing, gantry tilt, ...), free of identifiers.
        source_digest: sha256 over the source file bytes.
        modality_source: where ``modality`` came from: "dicom" (the header), "cohort" (given
            by the caller, e.g. the cohort table), "guess" (``io.read.guess_modality``) or
            "model" (recognised by a segmentation model); None when not recorded.
        spacing_unit: "mm" when ``spacing`` is physical (DICOM pixel spacing, NIfTI/NRRD/MHA
            geometry), "pixel" when the source carries none (PNG/JPEG/TIFF, MP4/AVI, DICOM
            without PixelSpacing): spacing is then 1 per pixel and sizes are pixel counts.
        body_region: the body region imaged ("head", "chest", "abdomen", "pelvis", ...:
            ``io.body_region``), or None when unknown.
        body_region_source: where it came from: "dicom" (BodyPartExamined), "description"
            (a series/study description or protocol name) or "field of view" (the rule of
            ``io.body_region``); None when unknown.
    """

    array: np.ndarray
    kind: Kind
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str | None = None
    frame_rate: float | None = None
    units: str | None = None
    warnings: list[str] = field(default_factory=list)
    source_digest: str = ""
    modality_source: str | None = None
    spacing_unit: str = "mm"
    body_region: str | None = None
    body_region_source: str | None = None

    @property
    def has_physical_spacing(self) -> bool:
        """True when ``spacing`` is in millimetres (see ``spacing_unit``)."""
        return self.spacing_unit == "mm"

    @property
    def is_rgb(self) -> bool:
        """True when the last axis holds colour channels."""
        spatial = 2 if self.kind == "image" else 3
        return self.array.ndim == spatial + 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        return self.array.shape[:-1] if self.is_rgb else self.array.shape

    def to_sitk(self) -> sitk.Image:
        """Return a SimpleITK image with this array and geometry (channels become vector pixels)."""
        img = sitk.GetImageFromArray(self.array, isVector=self.is_rgb)
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction])
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, kind: Kind, **meta) -> MedImage:
        """Build a MedImage from a SimpleITK image; ``meta`` fills the other attributes."""
        return cls(
            array=sitk.GetArrayFromImage(img),
            kind=kind,
            spacing=tuple(img.GetSpacing()),
            origin=tuple(img.GetOrigin()),
            direction=tuple(img.GetDirection()),
            **meta,
        )


@dataclass(frozen=True)
class ImageInfo:
    """A MedImage without its pixels: what a status record and the studies table keep of it.

    Attributes are MedImage's (same conventions) with ``shape`` the array's full shape.
    """

    kind: Kind
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str | None = None
    frame_rate: float | None = None
    units: str | None = None
    source_digest: str = ""
    warnings: tuple[str, ...] = ()
    modality_source: str | None = None
    spacing_unit: str = "mm"
    body_region: str | None = None
    body_region_source: str | None = None

    @classmethod
    def of(cls, image: MedImage) -> ImageInfo:
        """The description of ``image``."""
        return cls(
            kind=image.kind,
            shape=tuple(int(n) for n in image.array.shape),
            spacing=tuple(float(v) for v in image.spacing),
            origin=tuple(float(v) for v in image.origin),
            direction=tuple(float(v) for v in image.direction),
            modality=image.modality,
            frame_rate=image.frame_rate,
            units=image.units,
            source_digest=image.source_digest,
            warnings=tuple(image.warnings),
            modality_source=image.modality_source,
            spacing_unit=image.spacing_unit,
            body_region=image.body_region,
            body_region_source=image.body_region_source,
        )

    @classmethod
    def from_dict(cls, fields: dict) -> ImageInfo:
        """Rebuild from ``dataclasses.asdict`` output read back from JSON (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    @property
    def frame_count(self) -> int:
        """Frames (video), slices (volume) or 1 (image)."""
        return 1 if self.kind == "image" else int(self.shape[0])


def same_space(a: MedImage, b: MedImage, atol: float = 1e-4) -> bool:
    """True when two images share spatial shape, spacing, origin and direction."""
    return (
        a.spatial_shape == b.spatial_shape
        and np.allclose(a.spacing, b.spacing, atol=atol)
        and np.allclose(a.origin, b.origin, atol=atol)
        and np.allclose(a.direction, b.direction, atol=atol)
    )


def check_same_space(a: MedImage, b: MedImage, what: str = "images") -> None:
    """Raise ValueError naming the mismatch when two images do not share a space."""
    if not same_space(a, b):
        raise ValueError(
            f"{what} are not in the same space: shape {a.spatial_shape} vs {b.spatial_shape}, "
            f"spacing {a.spacing} vs {b.spacing}, origin {a.origin} vs {b.origin}; "
            "resample one onto the other (nearest neighbour for labels) first"
        )
