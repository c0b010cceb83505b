"""The shard loop reads the next study's store ahead, and records every study as before
(real compact model on CPU, small synthetic images)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from PIL import Image

import medsam3.pipeline.infer as infer
from medsam3.pipeline.cohort import Study
from medsam3.pipeline.ingest import ingest_study
from medsam3.pipeline.settings import IngestSettings, ModelSettings, SegmentSettings


def _png(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    grey = (rng.random((96, 96)) * 60).astype(np.uint8)
    grey[30:70, 25:75] += 120  # a bright organ-like blob
    Image.fromarray(grey).save(path)
    return str(path)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A shard of five studies: ok, ingest failed, store gone, store damaged, ok."""
    root = tmp_path_factory.mktemp("shard")
    out = root / "out"
    studies = [
        Study("first", _png(root / "a.png", 1), "ct", ("liver",)),
        Study("no-source", str(root / "missing.png"), "ct", ("liver",)),
        Study("store-gone", _png(root / "b.png", 2), "ct", ("liver",)),
        Study("store-cut", _png(root / "c.png", 3), "ct", ("liver",)),
        Study("last", _png(root / "d.png", 4), "ct", ("liver",)),
    ]
    for study in studies:
        ingest_study(study, IngestSettings(str(out), False))
    shutil.rmtree(out / "zarr" / "store-gone.zarr")
    (shard_file,) = [
        p for p in (out / "zarr" / "store-cut.zarr" / "0").rglob("c/*/*") if p.is_file()
    ]
    shard_file.write_bytes(shard_file.read_bytes()[:-40])  # its index cut short
    model = ModelSettings("compact", "", "", "cpu")
    return studies, SegmentSettings(str(out), model, ("png",), {}, False)


def test_the_shard_records_each_study_as_reading_in_the_foreground_does(shard, monkeypatch):
    studies, settings = shard
    threads, models = {}, []
    read_study, load_model = infer.read_study, infer.load_model

    def read_spy(store):  # the real reader, noting the thread that calls it
        threads[store.name] = threading.current_thread().name
        return read_study(store)

    def load_spy(*args, **kwargs):  # the real model, kept to segment again below
        models.append(load_model(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(infer, "read_study", read_spy)
    monkeypatch.setattr(infer, "load_model", load_spy)
    status = infer.segment_shard("shard-0000", studies, settings)
    records = {r.study_id: r for r in status.studies}
    assert [r.study_id for r in status.studies] == [s.study_id for s in studies]
    assert [r.status for r in status.studies] == ["ok", "skipped", "failed", "failed", "ok"]
    read = ("first", "store-gone", "store-cut", "last")  # a failed ingest is not read
    assert threads == {f"{name}.zarr": "prefetch" for name in read}
    assert "not a complete medsam3 study store" in records["store-gone"].error
    assert records["store-cut"].error and records["last"].computed == ["liver"]
    assert not any(t.name == "prefetch" for t in threading.enumerate())
    threads.clear()
    for study in studies[1:4]:  # the failures, read in the foreground: the same records
        direct = infer._segment_safely(study, models[0], settings)
        assert (direct.status, direct.error) == (records[study.study_id].status,
                                                 records[study.study_id].error)  # fmt: skip
    assert set(threads.values()) == {"MainThread"}


def test_a_rerun_in_another_precision_recomputes_and_the_same_precision_resumes(shard):
    """Labels record the precision they were computed in: a rerun at the same precision has
    nothing to compute, one in bfloat16 recomputes (the masks may differ a little)."""
    studies, settings = shard
    ok = [studies[0], studies[-1]]
    again = infer.segment_shard("shard-0000", ok, settings)
    assert [r.computed for r in again.studies] == [[], []]
    bf16 = ModelSettings("compact", "", "", "cpu", precision="bfloat16")
    fields = settings.to_params() | {"model": bf16}
    redone = infer.segment_shard("shard-0000", ok, SegmentSettings(**fields))
    assert [r.computed for r in redone.studies] == [["liver"], ["liver"]]
    attrs = infer.read_label_attrs(settings.layout.store("last"), "liver")
    assert attrs["precision"] == "bfloat16"
