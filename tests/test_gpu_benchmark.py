"""benchmarks/gpu.py runs end to end on the CPU at tiny scale (how it is checked without a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_at_tiny_scale():
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu"]
    res = subprocess.run(
        [*cmd, "--scale", "tiny"], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = res.stdout[res.stdout.index("| backend |") :]
    for row in ("images/s, model.segment", "slices/s, model.segment per_slice",
                "slices/s, bare forward (batched)"):  # fmt: skip
        assert f"| sam3 | {row}" in table, table
    assert "pipeline throughput / model.segment" in table
    assert "| compact | slices/s, bare encoder forward (batched)" in table
    assert "measured: ('sam3', 'images/s, model.segment'" in res.stdout  # printed as it comes
