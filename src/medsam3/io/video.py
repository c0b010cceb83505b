"""Video reading: container files through PyAV, and the video fields of DICOM cine loops.

Videos are (t, y, x, 3) uint8 RGB. Grayscale-looking RGB videos (e.g. ultrasound screen
recordings) stay RGB: the channels are kept as stored, so nothing is guessed away. DICOM cine
frames keep their stored layout: (t, y, x) for MONOCHROME, (t, y, x, 3) for colour.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medsam3.io.common import ReadError, combine_digests, file_digest, scrub_identifiers
from medsam3.io.formats import read_2d
from medsam3.io.image import MedImage

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def dicom_frame_rate(ds: Dataset) -> float | None:
    """Frames per second of a DICOM cine from FrameTime, FrameTimeVector, CineRate or
    RecommendedDisplayFrameRate (first one present and positive), else None."""
    frame_time = float(ds.get("FrameTime") or 0)
    if frame_time > 0:
        return 1000.0 / frame_time
    vector = [float(v) for v in (ds.get("FrameTimeVector") or [])][1:]
    if vector and np.mean(vector) > 0:
        return 1000.0 / float(np.mean(vector))
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = float(ds.get(tag) or 0)
        if rate > 0:
            return rate
    return None


def video_image(
    frames: np.ndarray,
    frame_rate: float | None,
    pixel_spacing: tuple[float, float] | None = None,
) -> dict:
    """MedImage fields for a stack of video frames.

    Args:
        frames: (t, y, x[, c]) frames.
        frame_rate: frames per second, or None when unknown (a warning is added).
        pixel_spacing: DICOM (row, column) spacing in mm, or None for 1 mm.

    Returns:
        dict with array, spacing (x, y, 1 per frame), origin 0, identity direction, frame_rate,
        warnings and spacing_unit ("pixel" without a pixel spacing).
    """
    ps = pixel_spacing or (1.0, 1.0)
    warnings = [] if frame_rate else ["unknown frame rate: frame_rate left empty"]
    return {
        "array": frames,
        "spacing": (float(ps[1]), float(ps[0]), 1.0),
        "origin": (0.0, 0.0, 0.0),
        "direction": tuple(np.eye(3).ravel().tolist()),
        "frame_rate": float(frame_rate) if frame_rate else None,
        "warnings": warnings,
        "spacing_unit": "mm" if pixel_spacing else "pixel",
    }


def _decode(path: Path) -> tuple[list[np.ndarray], float | None]:
    """Decode every frame of the first video stream as RGB; return (frames, fps)."""
    import av  # PyAV (FFmpeg) is imported only where a video is decoded

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ReadError(f"{path}: no video stream found; give a video file (mp4, avi, mov)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, float(rate) if rate else None


def read_video(path: Path) -> MedImage:
    """Read a video file with PyAV.

    Args:
        path: .mp4 / .avi / .mov (anything FFmpeg decodes).

    Returns:
        MedImage of kind "video": array (t, y, x, 3) uint8 RGB, spacing (1, 1, 1), frame_rate
        from the stream (frames per second); modality and digest are left for the caller.

    Raises:
        ReadError: the file is not a decodable video or has no frames.
    """
    import av

    try:
        frames, rate = _decode(path)
    except ReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ReadError(
            f"{path}: not a readable video ({scrub_identifiers(exc)}); "
            "check the file is complete, or "
            "re-encode it with `ffmpeg -i IN -c:v libx264 OUT.mp4`"
        ) from exc
    if not frames:
        raise ReadError(f"{path}: video holds no decodable frames; re-encode it")
    return MedImage(kind="video", **video_image(np.stack(frames), rate))


def natural_key(path: Path) -> list:
    """Sort key that orders frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _folder_fps(folder: Path) -> float | None:
    """``fps`` from a video.json in the frame folder or its parent (None when absent/null)."""
    for meta in (folder / "video.json", folder.parent / "video.json"):
        if meta.is_file():
            try:
                fps = json.loads(meta.read_text(encoding="utf-8")).get("fps")
            except (ValueError, AttributeError):
                return None
            return float(fps) if fps else None
    return None


def read_frame_folder(folder: Path, frames: list[Path]) -> MedImage:
    """Read a folder of 2D frame images (PNG/JPEG/TIFF) as one video.

    Args:
        folder: the frame folder (fps is taken from ``video.json`` here or in the parent).
        frames: the frame files; ordered by natural name order (frame_2 before frame_10).

    Returns:
        MedImage of kind "video": (t, y, x[, 3]) as the frames are stored, spacing (1, 1, 1),
        source_digest over the frame files.

    Raises:
        ReadError: frames differ in size or colour mode.
    """
    ordered = sorted(frames, key=natural_key)
    arrays = [read_2d(p).array for p in ordered]
    if len({(a.shape, a.dtype) for a in arrays}) > 1:
        raise ReadError(
            f"{folder}: frame images differ in size or colour mode; a frame folder must hold "
            "one video's frames only"
        )
    fields = video_image(np.stack(arrays), _folder_fps(folder))
    digest = combine_digests(file_digest(p) for p in ordered)
    return MedImage(kind="video", source_digest=digest, **fields)
