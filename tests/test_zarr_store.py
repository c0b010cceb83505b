"""Zarr study stores: layout (chunks, shards, compression), attributes, atomic writes, labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from medsam3 import __version__
from medsam3.io.image import MedImage
from medsam3.io.read import ReadError
from medsam3.io.zarr_store import (
    is_complete,
    list_labels,
    read_label,
    read_study,
    write_label,
    write_study,
)


def volume(n: int = 70, dtype=np.int16) -> MedImage:
    """A small oblique-geometry volume (n, 20, 24)."""
    rng = np.random.default_rng(n)
    return MedImage(
        array=rng.integers(-1000, 1000, (n, 20, 24)).astype(dtype),
        kind="volume",
        spacing=(0.7, 0.8, 2.5),
        origin=(1.0, -2.0, 3.5),
        direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
        modality="ct",
        units="HU",
        warnings=["irregular slice spacing: gaps 2-3 mm"],
        source_digest="ab" * 32,
    )


def sharding(store: Path, name: str = "0") -> dict:
    """The sharding codec configuration of an array's zarr.json."""
    meta = json.loads((store / name / "zarr.json").read_text())
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"
    return {"shard": meta["chunk_grid"]["configuration"]["chunk_shape"], **codec["configuration"]}


def test_volume_layout_is_sliced_sharded_and_blosc_lz4(tmp_path):
    image = volume(200)
    store = write_study(tmp_path / "v.zarr", image)
    conf = sharding(store)
    assert conf["shard"] == [64, 20, 24] and conf["chunk_shape"] == [1, 20, 24]
    blosc = [c for c in conf["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "lz4"
    assert blosc[0]["configuration"]["shuffle"] == "bitshuffle"
    # four shards written in parallel read back whole
    np.testing.assert_array_equal(read_study(store).array, image.array)
    store = write_study(tmp_path / "w.zarr", volume(70))
    shard_files = [p for p in (store / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == 2  # 70 slices -> two shards, not 70 chunk files


def test_video_and_big_image_layouts(tmp_path):
    video = MedImage(np.zeros((5, 16, 20, 3), np.uint8), "video", (1.0,) * 3, (0.0,) * 3,
                     tuple(np.eye(3).ravel()), frame_rate=24.0)  # fmt: skip
    conf = sharding(write_study(tmp_path / "v.zarr", video))
    assert conf["chunk_shape"] == [1, 3, 16, 20] and conf["shard"] == [5, 3, 16, 20]  # NGFF: tcyx
    big = MedImage(np.zeros((2100, 2300), np.uint8), "image", (1.0, 1.0), (0.0, 0.0),
                   (1.0, 0.0, 0.0, 1.0))  # fmt: skip
    conf = sharding(write_study(tmp_path / "b.zarr", big))
    assert conf["chunk_shape"] == [512, 512] and conf["shard"] == [2560, 2560]


def test_round_trip_attributes(tmp_path):
    image = volume(5, np.float32)
    store = write_study(tmp_path / "v.zarr", image, {"study_id": "s-1", "n": np.int64(3)})
    back = read_study(store)
    np.testing.assert_array_equal(back.array, image.array)
    assert back.array.dtype == np.float32
    for key in ("kind", "spacing", "origin", "direction", "modality", "units", "warnings"):
        assert getattr(back, key) == getattr(image, key), key
    assert back.source_digest == image.source_digest
    attrs = zarr.open_group(str(store), mode="r").attrs
    assert attrs["study_id"] == "s-1" and attrs["n"] == 3
    assert attrs["medsam3_version"] == __version__ and attrs["frame_rate"] is None


class FailingArray(np.ndarray):
    """An array whose second shard-sized read raises, like a crash in the middle of a write."""

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.start or 0) > 0:
            raise RuntimeError("simulated interruption")
        return np.asarray(self).__getitem__(key)


def test_interrupted_write_leaves_nothing_complete_and_rerun_succeeds(tmp_path):
    image = volume(70)
    broken = MedImage(**{**image.__dict__, "array": image.array.view(FailingArray)})
    target = tmp_path / "out" / "s.zarr"
    with pytest.raises(RuntimeError, match="simulated"):
        write_study(target, broken)
    assert not target.exists() and not is_complete(target)
    assert list((tmp_path / "out").iterdir()) == []  # staging folder cleaned up
    write_study(target, image)
    assert is_complete(target)
    with pytest.raises(RuntimeError, match="simulated"):  # a failed overwrite keeps the old one
        write_study(target, broken)
    np.testing.assert_array_equal(read_study(target).array, image.array)


def test_incomplete_store_is_detected(tmp_path):
    assert not is_complete(tmp_path / "missing.zarr")
    group = zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    group.create_array("0", shape=(2, 2), dtype="uint8")
    assert not is_complete(tmp_path / "half.zarr")  # no completion flag
    with pytest.raises(ReadError, match="not a complete"):
        read_study(tmp_path / "half.zarr")


def test_labels_round_trip_overwrite_and_checks(tmp_path):
    image = volume(70)
    store = write_study(tmp_path / "v.zarr", image)
    mask = image.array > 0
    write_label(store, "liver", mask, {"concept": "liver", "presence": 0.9})
    write_label(store, "kidney_left", np.zeros(mask.shape, np.uint8), {"concept": "kidney"})
    assert list_labels(store) == ["kidney_left", "liver"]
    back, attrs = read_label(store, "liver")
    assert back.dtype == np.uint8 and attrs == {"concept": "liver", "presence": 0.9}
    np.testing.assert_array_equal(back, mask)
    assert sharding(store, "labels/liver/0")["chunk_shape"] == [1, 20, 24]
    write_label(store, "liver", ~mask, {"concept": "liver", "presence": 0.1})
    np.testing.assert_array_equal(read_label(store, "liver")[0], ~mask)
    assert sorted(p.name for p in (store / "labels").iterdir()) == [
        "kidney_left", "liver", "zarr.json"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="spatial shape"):
        write_label(store, "bad", mask[:3], {})
    with pytest.raises(ValueError, match="file-safe"):
        write_label(store, "../x", mask, {})
    with pytest.raises(ReadError, match="no label 'spleen'"):
        read_label(store, "spleen")
    with pytest.raises(RuntimeError, match="simulated"):
        write_label(store, "broken", mask.astype(np.uint8).view(FailingArray), {})
    assert list_labels(store) == ["kidney_left", "liver"]
    assert is_complete(store) and read_study(store).warnings == image.warnings


def test_stores_written_with_the_earlier_zstd_codec_stay_readable(tmp_path, monkeypatch):
    from zarr.codecs import BloscCodec, BloscShuffle

    import medsam3.io.zarr_store as zarr_store

    old = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)
    monkeypatch.setattr(zarr_store, "compressor", lambda: old)
    image = volume(70)
    store = write_study(tmp_path / "old.zarr", image)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_study(store).array, image.array)
    write_label(store, "liver", image.array > 0, {"concept": "liver"})  # new codec beside old
    np.testing.assert_array_equal(read_label(store, "liver")[0], (image.array > 0).astype(np.uint8))


def _ngff_nodes(store: Path) -> dict:
    """The nodes ome-zarr-py's reader finds in a store, by name (the image: its study id)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(store)))())
    return {n.metadata["name"]: n for n in nodes if n.metadata.get("name")}


def test_stores_are_ome_zarr_with_a_pyramid_units_and_labels(tmp_path):
    """A real NGFF reader (ome-zarr-py) and validator (ome-zarr-models) open a big colour
    image: three levels, millimetre axes, scales from the spacing, labels with colours."""
    from ome_zarr_models.v05.image import Image as NgffImage

    rgb = np.random.default_rng(1).integers(0, 255, (1100, 900, 3)).astype(np.uint8)
    image = MedImage(rgb, "image", (0.3, 0.4), (5.0, 6.0), (1.0, 0.0, 0.0, 1.0), modality="fundus")
    store = write_study(tmp_path / "s-1.zarr", image, {"study_id": "s-1"})
    mask = np.zeros((1100, 900), np.uint8)
    mask[100:300, 200:400], mask[700:800, 100:200] = 1, 2
    write_label(store, "optic_disc", mask, {"concept": "optic disc"}, scores=[0.9, 0.7])
    NgffImage.from_zarr(zarr.open_group(str(store), mode="r"))  # raises when not NGFF 0.5
    nodes = _ngff_nodes(store)
    assert set(nodes) == {"s-1", "optic_disc"}
    img = nodes["s-1"].metadata
    assert [a["name"] for a in img["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in img["axes"]] == [None, "millimeter", "millimeter"]
    scales = [t[0]["scale"] for t in img["coordinateTransformations"]]
    assert scales == [[1.0, 0.4, 0.3], [1.0, 0.8, 0.6], [1.0, 1.6, 1.2]]
    assert [d.shape for d in nodes["s-1"].data] == [(3, 1100, 900), (3, 550, 450), (3, 275, 225)]
    label = nodes["optic_disc"]
    assert set(label.metadata["color"]) == {1, 2} and label.metadata["properties"][1] == {
        "score": 0.9
    }
    assert [d.shape for d in label.data][0] == (1100, 900)
    np.testing.assert_array_equal(np.asarray(label.data[0]), mask)
    back = read_study(store)  # medsam3's reader: SimpleITK order again
    np.testing.assert_array_equal(back.array, rgb)
    assert back.origin == (5.0, 6.0) and read_label(store, "optic_disc")[1] == {
        "concept": "optic disc"
    }


def test_pixel_spacing_has_no_unit_and_small_planes_one_level(tmp_path):
    video = MedImage(np.zeros((4, 16, 20), np.uint8), "video", (1.0, 1.0, 1.0), (0.0,) * 3,
                     tuple(np.eye(3).ravel()), frame_rate=25.0, spacing_unit="pixel")  # fmt: skip
    store = write_study(tmp_path / "v.zarr", video, {"study_id": "v"})
    meta = _ngff_nodes(store)["v"].metadata
    assert meta["axes"] == [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    assert meta["coordinateTransformations"] == [[{"type": "scale", "scale": [0.04, 1.0, 1.0]}]]
    assert read_study(store).spacing_unit == "pixel"
