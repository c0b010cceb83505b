"""Dask cluster helpers: a real LocalCluster computation and SLURMCluster job scripts / jobs."""

from __future__ import annotations

import os
import subprocess
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from medsam3.pipeline.cluster import (
    close_dask_client,
    dask_client,
    dask_settings,
    get_dask_client,
    make_slurm_cluster,
)


def _write_parquet_parts(root, n_parts=3, rows=50):
    frames = []
    for i in range(n_parts):
        rng = np.random.default_rng(i)
        df = pd.DataFrame(
            {
                "study_id": [f"st{i}_{j}" for j in range(rows)],
                "concept": rng.choice(["liver", "kidney", "spleen"], rows),
                "area_mm2": rng.uniform(0, 100, rows),
            }
        )
        df.to_parquet(root / f"part-{i}.parquet", index=False)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_settings_defaults_and_errors():
    assert dask_settings(None)["cluster"] == "local"
    assert dask_settings({"dask": {"n_workers": 3}})["n_workers"] == 3
    slurm = dask_settings({"dask": {"cluster": "SLURM", "queue": "gpu"}})
    assert slurm["cluster"] == "slurm" and slurm["queue"] == "gpu" and slurm["jobs"] == 1
    with pytest.raises(ValueError, match="unknown"):
        dask_settings({"dask": {"cluster": "kubernetes"}})
    with pytest.raises(ValueError, match="mapping"):
        dask_settings({"dask": "local"})


def test_local_cluster_aggregates_parquet(tmp_path):
    expected = _write_parquet_parts(tmp_path)
    config = {"dask": {"cluster": "local", "n_workers": 2, "threads_per_worker": 1}}
    with dask_client(config) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        ddf = dd.read_parquet(str(tmp_path / "*.parquet"))
        assert ddf.npartitions == 3
        got = ddf.groupby("concept")["area_mm2"].sum().compute().sort_index()
        cluster = client.cluster
    want = expected.groupby("concept")["area_mm2"].sum().sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy())
    assert cluster.status.name == "closed"


def test_slurm_job_script_directives():
    config = {
        "dask": {
            "cluster": "slurm",
            "queue": "gpu",
            "account": "medsam3",
            "cores": 2,
            "memory": "3GB",
            "walltime": "00:10:00",
            "job_extra_directives": ["--gpus=1"],
        }
    }
    cluster = make_slurm_cluster(dask_settings(config), scale=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in (
        "#SBATCH -p gpu",
        "#SBATCH -A medsam3",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=3G",
        "#SBATCH -t 00:10:00",
        "#SBATCH --gpus=1",
    ):
        assert directive in lines, f"{directive!r} missing from job script:\n{script}"
    assert any("distributed.cli.dask_worker" in line for line in lines)


def test_slurm_cluster_requires_resources():
    with pytest.raises(ValueError, match="walltime"):
        make_slurm_cluster(dask_settings({"dask": {"cluster": "slurm", "walltime": ""}}))


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_slurm_cluster_runs_on_slurm(tmp_path):
    expected = _write_parquet_parts(tmp_path, n_parts=2, rows=20)
    config = {
        "dask": {
            "cluster": "slurm",
            "queue": "cpu",
            "account": "medsam3",
            "cores": 1,
            "memory": "1GB",
            "walltime": "00:10:00",
            "jobs": 1,
            "log_directory": str(tmp_path / "dask-logs"),
        }
    }
    client = get_dask_client(config)
    try:
        client.wait_for_workers(1, timeout=180)
        job_ids = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        assert len(job_ids) == 1 and None not in job_ids, job_ids
        (job_id,) = job_ids
        queue = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %P"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
        ).stdout.split()
        assert queue == ["RUNNING", "cpu"]
        ddf = dd.read_parquet(str(tmp_path / "*.parquet"))
        got = ddf["area_mm2"].sum().compute()
    finally:
        close_dask_client(client)
    assert np.isclose(got, expected["area_mm2"].sum())
    for _ in range(60):  # scancel is asynchronous: the job leaves the queue within seconds
        if not _squeue_lists(job_id):
            break
        time.sleep(1)
    assert not _squeue_lists(job_id), f"SLURM job {job_id} still queued after close"


def _squeue_lists(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    return out.stdout.strip() in ("RUNNING", "PENDING", "COMPLETING")
