"""Real SLURM runs: the workflow goes through sbatch on a local single-node cluster.

The session fixture starts the cluster with .ci/slurm/setup.sh (root only). Each test runs
Snakemake with ``--profile profiles/slurm-local`` in a subprocess and checks SLURM's own
records (sacct), the executor's logs, and that outputs equal those of a local run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medsam3.models.build import uses_gpu

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm-local"
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")


# A workflow of the pipeline's shape: per-study rule (grouped by the profile), GPU shards of
# K studies, one aggregation. `sleep_s` lets one study's first attempt hang for the fault test.
TINY_SNAKEFILE = r"""
import os

N = int(config.get("n", 6))
K = int(config.get("k", 3))
ITEMS = [f"s{i:02d}" for i in range(N)]
SHARDS = [ITEMS[i : i + K] for i in range(0, N, K)]
SLOW = str(config.get("slow_item", ""))
SLOW_S = int(config.get("slow_seconds", 0))


def shard_inputs(wildcards):
    return [f"out/ingest/{s}.tsv" for s in SHARDS[int(wildcards.shard)]]


def sleep_seconds(wildcards, attempt):
    return SLOW_S if (wildcards.item == SLOW and attempt == 1) else 0


rule all:
    input:
        "out/report.tsv",


rule ingest_study:
    input:
        "data/{item}.txt",
    output:
        "out/ingest/{item}.tsv",
    log:
        "logs/ingest/{item}.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
        sleep_s=sleep_seconds,
    shell:
        "echo job=${{SLURM_JOB_ID:-local}} >> {log}; sleep {resources.sleep_s}; "
        "awk -v id={wildcards.item} '{{s+=$1}} END {{print id \"\\t\" s}}' {input} > {output}"


rule segment_shard:
    input:
        shard_inputs,
    output:
        "out/segment/shard{shard}.tsv",
    log:
        "logs/segment/shard{shard}.log",
    threads: 1
    resources:
        mem_mb=300,
        runtime=5,
        gpu=1,
        slurm_partition=os.environ.get("MEDSAM3_SLURM_GPU_PARTITION", "gpu"),
    shell:
        "echo job=${{SLURM_JOB_ID:-local}} gpus=${{CUDA_VISIBLE_DEVICES:-none}} >> {log}; "
        "awk -F'\\t' '{{print $1 \"\\t\" $2 * 2}}' {input} > {output}"


rule report:
    input:
        expand("out/segment/shard{shard}.tsv", shard=range(len(SHARDS))),
    output:
        "out/report.tsv",
    log:
        "logs/report.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "echo job=${{SLURM_JOB_ID:-local}} >> {log}; sort {input} > {output}"
"""


def _expected_report(n: int = 6) -> str:
    return "".join(f"s{i:02d}\t{2 * sum(range(1, i + 4))}\n" for i in range(n))


def _tiny_workflow(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "Snakefile").write_text(TINY_SNAKEFILE)
    for i in range(6):
        (root / "data" / f"s{i:02d}.txt").write_text("".join(f"{v}\n" for v in range(1, i + 4)))
    return root


def _snakemake(
    workdir: Path, *args: str, slurm: bool = True, timeout: int = 600, directory: bool = True
):
    """Run Snakemake from ``workdir`` (with ``-d workdir`` unless ``directory`` is False: the
    main workflow then works in its outdir, as the README runs it)."""
    mode = ["--profile", str(PROFILE)] if slurm else ["--cores", "2"]
    where = ["-d", str(workdir)] if directory else []
    cmd = [sys.executable, "-m", "snakemake", *where, *mode, *args]
    env = dict(os.environ, MEDSAM3_SLURM_GPU_PARTITION="gpu")  # as profiles/slurm asks
    return subprocess.run(
        cmd,
        cwd=workdir,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=env,
    )


def _sacct(job_ids) -> dict[str, dict[str, str]]:
    fields = ["JobID", "JobName", "State", "Partition", "Comment", "AllocTRES"]
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", ",".join(fields), "-j", ",".join(job_ids)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    return {r["JobID"]: r for r in rows}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _assert_went_through_slurm(res, workdir: Path, expected_jobs: int) -> dict[str, dict]:
    """``workdir``: the folder Snakemake worked in (holding .snakemake/slurm_logs)."""
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    ids = SUBMITTED.findall(log)
    assert len(ids) == len(set(ids)) == expected_jobs, log[-4000:]
    for job_id in ids:  # the executor's per-job SLURM log (kept by the local profile)
        assert list((workdir / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log")), job_id
    records = _sacct(ids)
    assert set(records) == set(ids)
    assert {r["State"] for r in records.values()} == {"COMPLETED"}, records
    assert len({r["JobName"] for r in records.values()}) == 1  # one run id for the run
    return records


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_workflow_through_slurm_matches_local(tmp_path, slurm_cluster):
    local = _tiny_workflow(tmp_path / "local")
    res_local = _snakemake(local, slurm=False)
    assert res_local.returncode == 0, res_local.stderr[-3000:]
    remote = _tiny_workflow(tmp_path / "slurm")
    res = _snakemake(remote)
    # 6 studies in groups of 3 (profile group-components) + 2 segment shards + 1 report
    records = _assert_went_through_slurm(res, remote, expected_jobs=5)
    comments = sorted(r["Comment"] for r in records.values())
    assert comments == ["rule_ingest_batch_ingest_study"] * 2 + [
        "rule_report",
        "rule_segment_shard_wildcards_0",
        "rule_segment_shard_wildcards_1",
    ]
    for r in records.values():
        gpu = r["Comment"].startswith("rule_segment")
        assert r["Partition"] == ("gpu" if gpu else "cpu"), r
        assert ("gres/gpu=1" in r["AllocTRES"]) == gpu, r
    assert _files(remote / "out") == _files(local / "out")
    assert (remote / "out" / "report.tsv").read_text() == _expected_report()
    ingest_ids = {(remote / "logs" / "ingest" / f"s{i:02d}.log").read_text() for i in range(6)}
    assert {f"job={j}\n" for j in records if "ingest" in records[j]["Comment"]} == ingest_ids
    assert (local / "logs" / "report.log").read_text() == "job=local\n"
    assert "gpus=0" in (remote / "logs" / "segment" / "shard0.log").read_text()


def test_production_profile_plans_grouped_jobs(tmp_path):
    """profiles/slurm parses (env placeholders, attempt expressions) and groups ingest jobs."""
    root = _tiny_workflow(tmp_path / "wf")
    env = dict(os.environ, MEDSAM3_SLURM_ACCOUNT="acct", MEDSAM3_SLURM_CPU_PARTITION="cpu")
    env["MEDSAM3_SLURM_GPU_PARTITION"] = "gpu"
    cmd = [sys.executable, "-m", "snakemake", "-d", str(root), "-n"]
    cmd += ["--profile", str(REPO / "profiles" / "slurm")]
    res = subprocess.run(
        cmd, cwd=root, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=300
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert re.search(r"ingest_study\s+6\n", log) and re.search(r"segment_shard\s+2\n", log), log
    assert "group job ingest_batch" in log.lower()
    segment = log[log.index("rule segment_shard:") :]
    assert "slurm_partition=gpu" in segment and "mem_mb=32000" in segment and "gpu=1" in segment


def _wait_for_job_of(log: Path, proc, timeout: float = 180.0) -> str:
    """SLURM job id that runs the slow study, read from its rule log once it started."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "snakemake ended before the slow job started"
        text = log.read_text() if log.exists() else ""
        if match := re.search(r"job=(\d+)", text):
            return match.group(1)
        time.sleep(1)
    raise AssertionError(f"no SLURM job started {log.name} within {timeout}s")


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_midrun_is_retried_and_nothing_lost(tmp_path, slurm_cluster):
    root = _tiny_workflow(tmp_path / "wf")
    cmd = [sys.executable, "-m", "snakemake", "-d", str(root), "--profile", str(PROFILE)]
    cmd += ["--config", "slow_item=s04", "slow_seconds=300"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        job_id = _wait_for_job_of(root / "logs" / "ingest" / "s04.log", proc)
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True)
        assert state.stdout.decode().strip() == "RUNNING"
        subprocess.run(["scancel", job_id], check=True)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = out.decode()
    assert proc.returncode == 0, log[-4000:]  # retries: 1 in the profile
    assert _sacct([job_id])[job_id]["State"].startswith("CANCELLED")
    ids = SUBMITTED.findall(log)
    assert job_id in ids and len(ids) == 6, log[-4000:]  # the cancelled group ran again
    others = _sacct([i for i in ids if i != job_id])
    assert {r["State"] for r in others.values()} == {"COMPLETED"}
    # every output exactly once, with the right content; no leftovers of the killed attempt
    assert sorted(p.name for p in (root / "out" / "ingest").iterdir()) == [
        f"s{i:02d}.tsv" for i in range(6)
    ]
    assert (root / "out" / "report.tsv").read_text() == _expected_report()
    # the rule log is rewritten by the successful attempt, in a later SLURM job
    (retry_log,) = (root / "logs" / "ingest" / "s04.log").read_text().split()
    assert retry_log.startswith("job=") and retry_log[4:] in others
    before = _files(root / "out")
    rerun = _snakemake(root, "--config", "slow_item=s04", "slow_seconds=300")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    assert _files(root / "out") == before


def _make_cohort(root: Path) -> Path:
    import numpy as np
    import SimpleITK as sitk
    from PIL import Image

    data = root / "data"
    data.mkdir(parents=True)
    rows = []
    for i in range(3):
        arr = np.random.default_rng(i).integers(-500, 500, (4, 12, 10)).astype(np.int16)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.7, 0.8, 2.5))
        sitk.WriteImage(img, str(data / f"vol{i}.nii.gz"))
        rows.append((f"vol{i}", str(data / f"vol{i}.nii.gz"), "ct", ""))
    rgb = np.random.default_rng(9).integers(0, 255, (16, 20, 3), np.uint8)
    Image.fromarray(rgb).save(data / "photo.png")
    rows.append(("photo", str(data / "photo.png"), "dermoscopy", ""))
    rows.append(("gone", str(data / "missing.nii.gz"), "", ""))
    cohort = root / "cohort.csv"
    pd.DataFrame(rows, columns=["study_id", "path", "modality", "concepts"]).to_csv(
        cohort, index=False
    )
    return cohort


# timings, and the config hash (it includes outdir, which differs between the two runs)
RUN_SPECIFIC = {"seconds", "model_load_s", "time", "start", "end", "duration_s", "config_sha256"}


def _comparable(path: Path) -> object:
    """File content without run-specific fields (timings, timestamps)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("seconds", None), data.pop("model_load_s", None)
        for record in data.get("studies", []):
            record.pop("seconds", None)
        return data
    if path.suffix == ".parquet":
        return pd.read_parquet(path).drop(columns=list(RUN_SPECIFIC), errors="ignore")
    return path.read_bytes()


def _assert_same(a: object, b: object, rel: str) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, obj=rel)
    else:
        assert a == b, rel


@pytest.mark.slurm
@pytest.mark.slow
def test_main_workflow_through_slurm_matches_local(tmp_path, slurm_cluster):
    """The whole default target (ingest, segment shards on the gpu partition, report)."""
    cohort = _make_cohort(tmp_path / "cohort")
    outs = {}
    for mode in ("local", "slurm"):
        work = tmp_path / mode
        work.mkdir()
        args = ["-s", str(REPO / "Snakefile"), "--config", f"cohort={cohort}"]
        args += [f"outdir={work / 'out'}", "ground_truth=", "shard_size=4"]
        res = _snakemake(work, *args, slurm=mode == "slurm", timeout=1500, directory=False)
        if mode == "slurm":  # 5 studies: 2 ingest groups of <= 3, 2 shards, 1 report
            records = _assert_went_through_slurm(res, work / "out", expected_jobs=5)
            # default config: compact on device auto asks for a GPU once it runs on CUDA
            gpu_jobs = 2 if uses_gpu("compact", "auto") else 0
            assert sum(r["Partition"] == "gpu" for r in records.values()) == gpu_jobs, records
        assert res.returncode == 0, res.stderr[-3000:]
        outs[mode] = work / "out"
    assert not (tmp_path / "slurm" / ".snakemake").exists()  # Snakemake's state is in out/
    skip = ("logs/", "parts/provenance/", "status/report.json", "reports/report.html")
    files = {
        m: sorted(
            str(p.relative_to(o))
            for p in o.rglob("*")
            if p.is_file() and not str(p.relative_to(o)).startswith((".snakemake/", ".medsam3"))
        )
        for m, o in outs.items()
    }
    assert files["slurm"] == files["local"]
    assert "reports/segments.parquet" in files["local"]
    for rel in files["local"]:
        if not rel.startswith(skip):
            _assert_same(_comparable(outs["slurm"] / rel), _comparable(outs["local"] / rel), rel)
    studies = pd.read_parquet(outs["slurm"] / "reports" / "studies.parquet")
    assert studies.set_index("study_id").loc["gone", "status"] == "failed"
    prov = pd.read_parquet(outs["slurm"] / "reports" / "provenance.parquet")
    assert len(prov) == 2 and prov["backend"].eq("compact").all()
