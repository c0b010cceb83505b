"""Per-study wall time through the whole workflow, split by stage, for shard_size 1 vs 10.

Usage: .venv/bin/python benchmarks/pipeline.py [--studies 20] [--backend compact]

Builds a cohort of small real-looking 2D studies (crops of the demo chest radiograph), runs
the full Snakemake workflow with --cores 1 (serial, so stage times add up), and splits the wall
time into ingest, model load, inference, aggregation (timers inside the jobs) and workflow
overhead (everything else: Snakemake scheduling, job start-up, interpreter imports). The
baseline is shard_size 1, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_cohort(root: Path, n: int) -> Path:
    from medsam3.pipeline.demo import _write_2d

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    _write_2d(data)
    xray = np.asarray(Image.open(data / "chest_xray.png"))
    rows = []
    for i in range(n):
        y, x = (i * 7) % 64, (i * 11) % 64
        Image.fromarray(xray[y : y + 256, x : x + 256]).save(data / f"cxr{i:03d}.png")
        rows.append((f"cxr-{i:03d}", f"data/cxr{i:03d}.png", "xray", "lung"))
    table = root / "cohort.csv"
    pd.DataFrame(rows, columns=["study_id", "path", "modality", "concepts"]).to_csv(
        table, index=False
    )
    return table


def run(root: Path, table: Path, shard_size: int, backend: str) -> dict:
    out = root / f"out_shard{shard_size}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        "1",
        "--quiet",
        "all",
        "--config",
        f"cohort={table}",
        f"outdir={out}",
        "ground_truth=",
        f"shard_size={shard_size}",
        "export=[png]",
        f"model={{backend: {backend}}}",
    ]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, cwd=root)  # the run works in its outdir
    wall = time.time() - t0
    ingest = sum(
        json.loads(p.read_text())["seconds"] for p in (out / "status" / "ingest").glob("*.json")
    )
    shards = [json.loads(p.read_text()) for p in (out / "status" / "segment").glob("*.json")]
    load = sum(s["model_load_s"] for s in shards)
    infer = sum(r["seconds"] for s in shards for r in s["studies"])
    report = json.loads((out / "status" / "report.json").read_text())["seconds"]
    overhead = wall - ingest - load - infer - report
    return {
        "shard_size": shard_size,
        "wall_s": wall,
        "ingest_s": ingest,
        "model_load_s": load,
        "inference_s": infer,
        "aggregation_s": report,
        "overhead_s": overhead,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--backend", default="compact")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_cohort(root, args.studies)
        results = [run(root, table, k, args.backend) for k in (1, 10)]
    print(f"{args.studies} studies, backend {args.backend}, --cores 1")
    print(
        f"{'shard':>5} {'wall':>8} {'ingest':>8} {'load':>8} {'infer':>8} {'aggr':>8} "
        f"{'overhead':>9} {'ovh%':>6} {'s/study':>8}"
    )
    for r in results:
        print(
            f"{r['shard_size']:>5} {r['wall_s']:8.1f} {r['ingest_s']:8.1f} "
            f"{r['model_load_s']:8.1f} {r['inference_s']:8.1f} {r['aggregation_s']:8.1f} "
            f"{r['overhead_s']:9.1f} "
            f"{100 * r['overhead_s'] / r['wall_s']:5.1f}% {r['wall_s'] / args.studies:8.2f}"
        )
    base, sharded = results
    print(f"ratio wall(shard 10) / wall(shard 1) = {sharded['wall_s'] / base['wall_s']:.3f}")
    print("goal: overhead < 10% of the total at shard_size 10")


if __name__ == "__main__":
    main()
