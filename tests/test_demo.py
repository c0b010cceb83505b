"""The demo builds its data under the output folder: a read-only checkout runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from medsam3.io.zarr_store import is_complete
from medsam3.pipeline.demo import COHORT, write_tables

pytestmark = pytest.mark.slow


def _copy_checkout(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, encoding="utf-8", check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def _read_only(folder: Path) -> bool:
    """Make ``folder`` read-only: a read-only bind mount as root (permissions do not stop
    root), else no write bits. False when that is impossible here."""
    if os.geteuid() == 0:
        for cmd in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,bind,ro", str(folder)]):  # fmt: skip
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return False
        return True
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    return True


def test_the_demo_runs_from_a_read_only_checkout(tmp_path):
    checkout, out, launch = tmp_path / "checkout", tmp_path / "out", tmp_path / "launch"
    checkout.mkdir()
    launch.mkdir()
    _copy_checkout(checkout)
    if not _read_only(checkout):
        pytest.skip("cannot make a read-only checkout here (mount --bind refused)")
    try:
        assert subprocess.run(["touch", str(checkout / "x")], capture_output=True).returncode
        run = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "--cores",
             "2", "ingest", "--config", f"outdir={out}"],
            cwd=launch, capture_output=True, encoding="utf-8", timeout=1800,
        )  # fmt: skip
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(checkout)], capture_output=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(checkout)])
    assert run.returncode == 0, run.stderr[-4000:]
    assert (out / "demo" / "data" / "chest_xray.png").is_file()
    assert not (checkout / "resources" / "demo" / "data").exists()
    for study_id, *_ in COHORT:
        if study_id != "demo-truncated":
            assert is_complete(out / "zarr" / f"{study_id}.zarr"), study_id
    again = tmp_path / "tables"
    write_tables(again)
    assert (again / "cohort.csv").read_text() == (out / "demo" / "cohort.csv").read_text()
