"""Shared fixtures: the optional ../shared/data set and temporary output folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSAM3_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The curated ../shared/data folder; tests using it skip cleanly where it is absent."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"shared data set not found at {SHARED_DATA} (set MEDSAM3_SHARED_DATA)")
    return SHARED_DATA


def snakemake_cmd(*args: str) -> list[str]:
    """Command line running the repository's Snakefile on 2 local cores.

    Run it with ``cwd`` set to the launch folder: the workflow itself works in its outdir
    (``workdir:`` in ``common.smk``), which ``-d`` would override.
    """
    snakefile = str(REPO / "Snakefile")
    return [sys.executable, "-m", "snakemake", "-s", snakefile, "--cores", "2", *args]


def run_snakemake(launch: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile from ``launch`` and return the finished process."""
    return subprocess.run(
        snakemake_cmd(*args),
        cwd=launch,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


SLURM_SETUP = REPO / ".ci" / "slurm" / "setup.sh"


def _node_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(
        ["sinfo", "-h", "-o", "%T"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=30,
    )
    up = {"idle", "mixed", "allocated", "completing"}
    return res.returncode == 0 and bool(up & set(res.stdout.split()))


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but SLURM is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A running local SLURM cluster; started with .ci/slurm/setup.sh when root."""
    if _node_ready():
        return
    if os.geteuid() != 0:
        _unavailable("SLURM is not running and starting it needs root: sudo .ci/slurm/setup.sh")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        _unavailable("SLURM is not installed and apt-get is unavailable to install it")
    res = subprocess.run(
        ["bash", str(SLURM_SETUP)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=900,
    )
    if res.returncode != 0 or not _node_ready():
        _unavailable(f".ci/slurm/setup.sh failed (rc={res.returncode}):\n{res.stderr[-3000:]}")
