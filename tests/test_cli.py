"""The ``medsam3`` command: bad requests fail fast with one line, output modes, quiet logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

CLI = [sys.executable, "-m", "medsam3.cli"]


def _run(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, encoding="utf-8", timeout=600
    )


@pytest.fixture
def png(tmp_path):
    img = np.full((64, 80), 30, np.uint8)
    img[20:44, 25:55] = 200
    Image.fromarray(img).save(tmp_path / "x.png")
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png", "-p", "lung", "-o", "out"], "missing.png does not exist"),
        (["x.png", "-p", "lung", "-o", "afile"], "afile is a file, not a folder"),
        (["x.png", "-p", "lung", "-o", "afile/sub"], "afile is a file, not a folder"),
        (["x.png", "-p", "lung", "-o", "out", "--modality", "foo"], "'foo' is not a known"),
        (["x.png", "-p", " ", "-o", "out"], "concept #0 is empty"),
        (["x.png", "-p", "lung", "-p", "lung", "-o", "out"], "'lung' is listed twice"),
    ],
)
def test_a_bad_request_fails_before_the_model_loads_with_one_line(png, args, message):
    start = time.time()
    run = _run("segment", *args, cwd=png)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("medsam3 segment: error: ")
    assert message in run.stderr
    assert time.time() - start < 10  # no model load (about 15 s on 2 cores)
    assert not (png / "out").exists()


def test_subcommand_help_names_the_subcommand(tmp_path):
    for sub in ("segment", "evaluate", "concepts"):
        run = _run(sub, "--help", cwd=tmp_path)
        assert run.returncode == 0 and run.stdout.startswith(f"usage: medsam3 {sub}"), run.stdout


@pytest.mark.slow
def test_json_and_quiet_output_without_third_party_noise(png):
    run = _run("segment", "x.png", "-p", "lung", "-o", "out", "--modality", "CR", "--json", cwd=png)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["modality"] == "xray" and summary["spacing_unit"] == "pixel"
    lung = summary["concepts"]["lung"]
    assert "area_mm2" not in lung and lung["area_px"] == lung["voxels"]
    assert lung["n_instances"] == len(lung["instance_scores"])
    for noise in ("SentenceTransformer", "Batches", "Load pretrained", "INFO"):
        assert noise not in run.stderr, run.stderr
    quiet = _run("segment", "x.png", "-p", "lung", "-o", "out2", "-q", cwd=png)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    plain = _run("segment", "x.png", "-p", "lung", "-o", "out3", "--modality", "xray", cwd=png)
    assert plain.stdout.splitlines()[0].startswith("lung: presence ")
    assert "pixels (no physical spacing)" in plain.stdout and "summary: out3" in plain.stdout
    assert summary["precision"] == "float32"
    half = _run("segment", "x.png", "-p", "lung", "-o", "out4", "--precision", "bfloat16", "--json",
                cwd=png)  # fmt: skip
    assert half.returncode == 0 and json.loads(half.stdout)["precision"] == "bfloat16", half.stderr
