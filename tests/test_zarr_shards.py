"""The direct shard writer writes the files zarr-python writes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec

from medsam3.io.zarr_shards import slice_codec, write_slices
from medsam3.io.zarr_store import chunk_layout, compressor


def create(path: Path, shape, dtype, kind: str = "volume", compressors=None) -> zarr.Array:
    """An empty array with the layout and codec of a study store's level."""
    chunks, shards = chunk_layout(shape, kind)
    return zarr.create_array(
        store=str(path),
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=compressors or [compressor()],
        fill_value=0,
        zarr_format=3,
    )


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def data(shape, dtype) -> np.ndarray:
    """Random values with an all-zero slice and (for 130+ slices) an all-zero shard."""
    values = np.random.default_rng(len(shape)).normal(0, 300, shape)
    values = np.abs(values) if np.dtype(dtype).kind == "u" else values
    out = values.astype(dtype)
    out[3] = 0
    out[64:128] = 0 if len(out) >= 130 else out[64:128]
    return out


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((150, 20, 24), np.int16),  # partial last shard, an empty shard, an empty slice
        ((70, 3, 16, 20), np.uint8),  # RGB video (t, c, y, x)
        ((5, 33, 17), np.float32),
        ((64, 8, 8), np.uint16),  # tiny planes: blosc cannot shrink them
        ((200, 12, 10), np.uint32),  # label ids
    ],
)
def test_shards_are_the_files_zarr_python_writes(tmp_path, shape, dtype):
    values = data(shape, dtype)
    ours, theirs = create(tmp_path / "ours", shape, dtype), create(tmp_path / "zarr", shape, dtype)
    codec = slice_codec(ours)
    assert codec is not None
    write_slices(ours, values, codec)
    theirs[...] = values
    assert files(tmp_path / "ours") == files(tmp_path / "zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours"))[...], values)


def test_other_layouts_are_left_to_zarr_python(tmp_path):
    assert slice_codec(create(tmp_path / "a", (2100, 2300), np.uint8, kind="image")) is None
    gzip = create(tmp_path / "b", (70, 8, 8), np.int16, compressors=[GzipCodec()])
    assert slice_codec(gzip) is None
    plain = zarr.create_array(store=str(tmp_path / "c"), shape=(4, 8), dtype="i2", chunks=(1, 8))
    assert slice_codec(plain) is None
    in_memory = zarr.create_array(store={}, shape=(4, 8), dtype="i2", chunks=(1, 8), shards=(4, 8))
    assert slice_codec(in_memory) is None


def test_a_failing_shard_raises(tmp_path):
    arr = create(tmp_path / "a", (130, 8, 8), np.int16)
    (tmp_path / "a" / "c").write_text("a file where the shard folder goes")
    with pytest.raises(OSError):
        write_slices(arr, data((130, 8, 8), np.int16), slice_codec(arr))
