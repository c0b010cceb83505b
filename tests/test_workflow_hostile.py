"""Real Snakemake runs on hostile input (issue 17): nothing lost, nothing leaked, clear messages.

One user cohort holds a PHI-laden DICOM series (patient name, ID, birth date and accession
number in its tags and folder names) with a truncated slice and a stray file, a ``.dcmlist``
naming a missing file, colliding and over-long phrases, a zero-size NIfTI, a two-series folder
named "2", an unknown modality without concepts and a study whose modality is only guessed.
Further runs: a read-only and a full disk (tmpfs mounts, root only), ``kill -9`` during an
ingest, two concurrent runs on one outdir, bad cohort files, and a compact head with a
modality classifier (a real ``ModalityHead`` with random weights).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import REPO, run_snakemake, snakemake_cmd
from io_helpers import PHI_STRINGS, PHI_TAGS, copy_real_ct_series
from PIL import Image
from safetensors.torch import load_file, save_file

from medsam3.io.common import concept_slug
from medsam3.io.zarr_store import list_labels, read_label_attrs, read_study
from medsam3.models.compact import build_compact, default_checkpoint
from medsam3.models.modality import ModalityHead
from medsam3.models.preprocess import to_uint8_rgb
from medsam3.models.upright import describe, load_upright

pytestmark = pytest.mark.slow

LONG = ("left lower lobe pulmonary nodule with ground glass opacity " * 7)[:400]
DEFAULT_CONCEPTS = yaml.safe_load((REPO / "config.yaml").read_text())["default_concepts"]


def _png(path: Path, seed: int) -> None:
    img = np.full((64, 80), 30, np.uint8)
    img[20:44, 25:55] = 200
    noise = np.random.default_rng(seed).normal(0, 5, img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(path)


def _head(path: Path, modality_classes: list[str] | None) -> Path:
    """The shipped concept head without a modality classifier, or with a random one."""
    state = {k: v for k, v in load_file(default_checkpoint()).items() if "modality." not in k}
    info = json.loads(default_checkpoint().with_suffix(".json").read_text(encoding="utf-8"))
    info.pop("modality_classes", None)
    if modality_classes:
        torch.manual_seed(0)
        head = ModalityHead(modality_classes)
        state |= {f"modality.{k}": v.contiguous() for k, v in head.state_dict().items()}
        info["modality_classes"] = modality_classes
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps(info), encoding="utf-8")
    return path


def _model_config(head: Path) -> str:
    return f'model={{"backend": "compact", "checkpoint": "{head}", "lora": "", "device": "auto"}}'


def _hostile_cohort(root: Path) -> Path:
    data = root / "data"
    phi = data / "DOE_JOHN_PHI12345_19700101" / "CT_ACC98765"
    copy_real_ct_series(phi, PHI_TAGS, cut=2)
    (phi / "notes.txt").write_text("scanner notes")
    listing = root / "lists" / "phi.dcmlist"
    listing.parent.mkdir(parents=True)
    listing.write_text(f"{phi / 'IM0000.dcm'}\n{phi / 'IM0099.dcm'}\n")
    copy_real_ct_series(data / "2")
    for path in copy_real_ct_series(data / "b", series_uid="1.2.826.0.1.3680043.2.1125.7"):
        shutil.move(path, data / "2" / f"b_{path.name}")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 0), np.int16), np.eye(4)), data / "zero.nii.gz")
    for i, name in enumerate(("collide", "edit", "long", "spectro", "guessed")):
        _png(data / f"{name}.png", i)
    rows = [
        ("phi-series", str(phi), "", "liver"),
        ("", str(listing), "", ""),
        ("collide", "data/collide.png", "xray", "Lung;lung!"),
        ("edit", "data/edit.png", "xray", "lung"),
        ("long", "data/long.png", "xray", LONG),
        ("zero", "data/zero.nii.gz", "", ""),
        ("two", "data/2", "", ""),
        ("spectro", "data/spectro.png", "spectroscopy", ""),
        ("guessed", "data/guessed.png", "", ""),
    ]
    table = pd.DataFrame(rows, columns=["study_id", "path", "modality", "concepts"])
    table.to_csv(root / "cohort.csv", index=False)
    return root / "cohort.csv"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Two runs on the hostile cohort from a separate launch folder, default configuration
    (public salt, ground truth "auto") and a head without modality classifier; between them
    a killed job's leftovers are planted and one study's phrase is edited."""
    root = tmp_path_factory.mktemp("hostile")
    cohort = _hostile_cohort(root)
    launch, out = root / "launch", root / "out"
    launch.mkdir()
    head = _head(root / "heads" / "plain.safetensors", None)
    config = ["--config", f"cohort={cohort}", f"outdir={out}", _model_config(head)]
    first = run_snakemake(launch, *config)
    assert first.returncode == 0, first.stderr[-4000:]
    planted = [
        out / "zarr" / ".s-gone.zarr.tmp-0badf00d",
        out / "zarr" / "collide.zarr" / "labels" / ".lung.tmp-0badf00d",
        out / "masks" / "collide" / ".lung.tmp-0badf00d.png",
    ]
    for path in planted:
        (path / "image").mkdir(parents=True) if path.suffix != ".png" else path.write_bytes(b"x")
    table = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    table.loc[table["study_id"] == "edit", "concepts"] = "lung!"
    table.to_csv(cohort, index=False)
    second = run_snakemake(launch, *config)
    assert second.returncode == 0, second.stderr[-4000:]
    return {"root": root, "out": out, "launch": launch, "runs": (first, second), "planted": planted}


def _table(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / "reports" / f"{name}.parquet")


def _segment_record(out: Path, study_id: str) -> dict:
    for path in (out / "status" / "segment").glob("*.json"):
        for record in json.loads(path.read_text(encoding="utf-8"))["studies"]:
            if record["study_id"] == study_id:
                return record
    raise KeyError(study_id)


def test_input_failures_are_recorded_with_clear_reasons(hostile):
    out, (first, _) = hostile["out"], hostile["runs"]
    errors = _table(out, "failures").set_index("study_id")["error"]
    assert "the NIfTI header gives shape (16, 16, 0), with no voxels" in errors["zero"]
    assert errors["two"].startswith("<source>: found 2 DICOM series")
    assert "no concepts to segment" in errors["spectro"]
    assert "default_concepts.spectroscopy" in errors["spectro"]
    listed = [sid for sid in errors.index if sid.startswith("s-")]
    assert (
        len(listed) == 1 and "1 listed file(s) do not exist (first: <source>)" in errors[listed[0]]
    )
    assert len(errors) == 4
    summary = first.stderr[first.stderr.index("medsam3: 9 studies") :]
    assert summary.startswith("medsam3: 9 studies: 9 ingested, 5 segmented, 4 failed on their")
    assert "reports/failures.parquet" in summary


def test_phrases_that_share_a_slug_keep_their_own_labels_and_rows(hostile):
    out = hostile["out"]
    store = out / "zarr" / "collide.zarr"
    names = {n: read_label_attrs(store, n) for n in list_labels(store)}
    assert sorted(names) == sorted([concept_slug("Lung"), concept_slug("lung!")])
    assert {n: a["concept"] for n, a in names.items()} == {
        concept_slug("Lung"): "Lung",
        concept_slug("lung!"): "lung!",
    }
    rows = _table(out, "segments").query("study_id == 'collide' and level == 'concept'")
    for row in rows.itertuples():
        assert row.presence == names[concept_slug(row.concept)]["presence"]
    assert sorted(rows["concept"]) == ["Lung", "lung!"]
    assert sorted(p.name for p in (out / "masks" / "collide").iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("png", "nii.gz")
    )


def test_an_edited_phrase_is_segmented_again_not_read_from_the_old_label(hostile):
    out = hostile["out"]
    record = _segment_record(out, "edit")
    assert record["concepts"] == ["lung!"] and record["computed"] == ["lung!"]
    rows = _table(out, "segments").query("study_id == 'edit' and level == 'concept'")
    assert list(rows["concept"]) == ["lung!"]
    attrs = read_label_attrs(out / "zarr" / "edit.zarr", concept_slug("lung!"))
    assert attrs["concept"] == "lung!" and rows["presence"].iloc[0] == attrs["presence"]
    assert _segment_record(out, "collide")["computed"] == []  # unchanged studies resume


def test_a_400_character_phrase_gets_a_bounded_label_name(hostile):
    out = hostile["out"]
    (name,) = list_labels(out / "zarr" / "long.zarr")
    assert name == concept_slug(LONG) and len(name) <= 58
    rows = _table(out, "segments").query("study_id == 'long' and level == 'concept'")
    assert list(rows["concept"]) == [LONG]


def test_ingest_warnings_and_missing_slices_reach_the_tables_and_the_report(hostile):
    out = hostile["out"]
    studies = _table(out, "studies").set_index("study_id")
    warnings = list(studies.loc["phi-series", "warnings"])
    assert warnings[0].startswith("ignored 1 image file(s) without pixel data (truncated?)")
    assert any(w.startswith("ignored 1 non-DICOM file(s)") for w in warnings)
    assert any(w.startswith("missing slices: 1 gap(s)") for w in warnings)
    assert any(
        w.startswith("modality guessed as 'xray'") for w in studies.loc["guessed", "warnings"]
    )
    segments = _table(out, "segments")
    assert segments.query("study_id == 'phi-series'")["missing_slices"].all()
    assert not segments.query("study_id != 'phi-series'")["missing_slices"].any()
    html = (out / "reports" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Ingest warnings</h2>" in html and "<td>missing slices</td><td>1</td>" in html


def test_modality_sources_and_the_fallback_without_a_classifier(hostile):
    studies = _table(hostile["out"], "studies").set_index("study_id")
    assert studies.loc["phi-series", "modality_source"] == "dicom"
    assert studies.loc["collide", "modality_source"] == "cohort"
    guessed = studies.loc["guessed"]
    assert (guessed["modality"], guessed["modality_source"]) == ("xray", "guess")
    assert pd.isna(guessed["modality_predicted"]) and pd.isna(guessed["modality_confidence"])
    rows = _table(hostile["out"], "segments").query("study_id == 'guessed' and level == 'concept'")
    assert sorted(rows["concept"]) == sorted(DEFAULT_CONCEPTS["xray"])


def test_no_patient_identifier_or_source_path_anywhere(hostile):
    out, launch, root = hostile["out"], hostile["launch"], hostile["root"]
    assert not (launch / ".snakemake").exists() and not list(launch.iterdir())
    assert (out / ".snakemake" / "metadata").is_dir() and list(
        (out / ".snakemake" / "log").iterdir()
    )
    found = []
    for path in [p for p in out.rglob("*") if p.is_file()]:
        blob = path.read_bytes()
        found += [f"{s} in {path.relative_to(out)}" for s in PHI_STRINGS if s.encode() in blob]
    for run in hostile["runs"]:
        found += [f"{s} in Snakemake's output" for s in PHI_STRINGS if s in run.stdout + run.stderr]
    assert not found, found
    assert str(root / "data") not in "".join(r.stdout + r.stderr for r in hostile["runs"])


def test_a_user_cohort_warns_about_the_public_salt_and_gets_no_demo_metrics(hostile):
    out, (first, _) = hostile["out"], hostile["runs"]
    assert "medsam3 warning: study_id_salt is the public default" in first.stderr
    provenance = _table(out, "provenance")
    assert all(any("public default" in w for w in ws) for ws in provenance["warnings"])
    assert _table(out, "metrics").empty
    assert "metrics" not in set(_table(out, "failures")["stage"])


def test_what_killed_jobs_left_is_removed_by_the_next_run(hostile):
    for path in hostile["planted"]:
        assert not path.exists(), path
    assert not [p for p in hostile["out"].rglob(".*tmp-*")]


def test_the_model_names_a_guessed_modality(tmp_path):
    """A compact head with a (random) modality classifier: guessed studies are segmented as
    the modality it names, with that modality's default concepts; given ones are kept."""
    classes = [m for m, ps in DEFAULT_CONCEPTS.items() if m != "*" and "/" not in m and ps]
    head = _head(tmp_path / "heads" / "modality.safetensors", classes)
    _png(tmp_path / "data" / "photo.png", 0)
    _png(tmp_path / "data" / "given.png", 1)
    volume = np.random.default_rng(0).integers(-1000, 1000, (6, 32, 32)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "data" / "vol.nii.gz"))
    rows = [
        ("photo", "data/photo.png", ""),
        ("vol", "data/vol.nii.gz", ""),
        ("given", "data/given.png", "xray"),
    ]
    pd.DataFrame(rows, columns=["study_id", "path", "modality"]).to_csv(
        tmp_path / "cohort.csv", index=False
    )
    out = tmp_path / "out"
    config = [f"cohort={tmp_path / 'cohort.csv'}", f"outdir={out}", "study_id_salt=test-salt"]
    run = run_snakemake(tmp_path, "--config", *config, _model_config(head))
    assert run.returncode == 0, run.stderr[-4000:]
    studies = _table(out, "studies").set_index("study_id")
    segments = _table(out, "segments").query("level == 'concept'")
    model = build_compact(checkpoint=head)
    for sid in ("photo", "vol"):
        row = studies.loc[sid]
        expected = model.recognise_modality(read_study(out / "zarr" / f"{sid}.zarr").array)
        assert row["modality_source"] == "model"
        assert (row["modality"], row["modality_predicted"]) == (expected.modality,) * 2
        assert row["modality_confidence"] == pytest.approx(expected.confidence)
        concepts = sorted(segments.query("study_id == @sid")["concept"])
        assert concepts == sorted(DEFAULT_CONCEPTS[expected.modality])
    given = studies.loc["given"]
    assert (given["modality"], given["modality_source"]) == ("xray", "cohort")
    assert pd.isna(given["modality_predicted"])
    # an X-ray image is asked which way up it is (the packaged classifier); a volume is not
    stored = to_uint8_rgb(read_study(out / "zarr" / "given.zarr").array)
    order, guess = load_upright().order_to_apply(stored)
    assert given["upright"] == describe({**asdict(order), "applied": not order.identity})
    assert given["upright_confidence"] == pytest.approx(guess.confidence)
    assert pd.isna(studies.loc["vol", "upright"]) and pd.isna(
        studies.loc["vol", "upright_confidence"]
    )


@contextmanager
def _tmpfs(folder: Path, options: str):
    """A tmpfs mounted on ``folder`` (root only; skips elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {mount.stderr.decode()[-200:]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize(
    ("options", "errno_text"),
    [("ro,size=1m", "Read-only file system"), ("size=200k", "No space left on device")],
)
def test_a_read_only_or_full_disk_fails_the_job_and_a_rerun_redoes_it(
    tmp_path, options, errno_text
):
    data = tmp_path / "DOE_JOHN_PHI12345"
    data.mkdir()
    rows = []
    for i in range(3):  # full-range noise: 256 kB that no codec shrinks below the 200 kB disk
        arr = np.random.default_rng(i).integers(-32768, 32767, (32, 64, 64)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(data / f"v{i}.nii.gz"))
        rows.append((f"v{i}", str(data / f"v{i}.nii.gz"), "ct"))
    pd.DataFrame(rows, columns=["study_id", "path", "modality"]).to_csv(
        tmp_path / "c.csv", index=False
    )
    out = tmp_path / "out"
    config = ["--config", f"cohort={tmp_path / 'c.csv'}", f"outdir={out}", "study_id_salt=s"]
    with _tmpfs(out / "zarr", options):
        failed = run_snakemake(tmp_path, "ingest", *config, "--keep-going")
    assert failed.returncode != 0
    assert not list((out / "status" / "ingest").glob("*.json"))  # nothing recorded as failed
    logs = "".join(p.read_text() for p in (out / "logs" / "ingest").glob("*.log"))
    assert "EnvironmentFailure: ingest v0:" in logs and errno_text in logs
    assert "DOE_JOHN" not in logs + failed.stdout + failed.stderr
    assert "medsam3: 3 studies: 0 ingested" in failed.stderr
    assert "Environment errors (disk full" in failed.stderr
    rerun = run_snakemake(tmp_path, "ingest", *config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _table(out, "ingest_failures").empty
    assert sorted(p.name for p in (out / "zarr").iterdir()) == ["v0.zarr", "v1.zarr", "v2.zarr"]


def _volumes(folder: Path, n: int, shape=(300, 256, 256)) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(-1000, 1000, shape).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"v{i}.nii"))
        rows.append((f"v{i}", str(folder / f"v{i}.nii"), "ct"))
    table = pd.DataFrame(rows, columns=["study_id", "path", "modality"])
    table.to_csv(folder / "cohort.csv", index=False)
    return folder / "cohort.csv"


def test_a_store_left_by_kill_9_during_ingest_is_removed_by_the_next_run(tmp_path):
    cohort = _volumes(tmp_path / "data", 1, (600, 256, 256))
    out = tmp_path / "out"
    config = ["ingest", "--config", f"cohort={cohort}", f"outdir={out}", "study_id_salt=s"]
    proc = subprocess.Popen(
        snakemake_cmd(*config),
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list(
        (out / "zarr").glob(".v0.zarr.tmp-*/0")
    ):  # NGFF array
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p.name for p in (out / "zarr").iterdir()]
    assert len(left) == 1 and left[0].startswith(".v0.zarr.tmp-"), left
    assert run_snakemake(tmp_path, *config, "--unlock").returncode == 0
    rerun = run_snakemake(tmp_path, *config, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [p.name for p in (out / "zarr").iterdir()] == ["v0.zarr"]


def test_a_second_run_on_the_same_outdir_is_refused(tmp_path):
    cohort = _volumes(tmp_path / "data", 6)
    out = tmp_path / "out"
    config = ["ingest", "--config", f"cohort={cohort}", f"outdir={out}", "study_id_salt=s"]
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir(), second_dir.mkdir()
    first = subprocess.Popen(
        [*snakemake_cmd(*config), "--cores", "1"],
        cwd=first_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
    )
    deadline = time.time() + 600
    lock = out / ".medsam3.lock"
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.05)
    second = run_snakemake(second_dir, *config)
    log, _ = first.communicate(timeout=1200)
    assert first.returncode == 0, log[-3000:]
    assert second.returncode != 0
    assert f"outdir {out} is in use by another medsam3 run (pid {first.pid} on" in second.stderr
    assert "6 studies: 6 ingested" in log and "Finished jobid" not in second.stderr


def test_bad_cohort_files_and_outdirs_get_clear_messages(tmp_path):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "latin1.csv").write_bytes(b"path,modality\na.png,xray\na.png,\xe9chographie\n")
    (tmp_path / "extra.csv").write_text(
        "path,modality,concepts\na.png,xray,lung\na.png,xray,lung,heart\n"
    )
    (tmp_path / "ok.csv").write_text("path,modality,concepts\na.png,xray,lung\n")
    (tmp_path / "file").write_text("not a folder")
    cases = {
        ("latin1.csv", "out"): "latin1.csv line 3: byte 0xe9 is not UTF-8",
        ("extra.csv", "out"): "extra.csv row 3: 4 fields but the header has 3",
        (
            "ok.csv",
            "file",
        ): f"outdir {tmp_path / 'file'} cannot be created: {tmp_path / 'file'} is a file",
    }
    for (cohort, outdir), message in cases.items():
        run = run_snakemake(tmp_path, "-n", "--config", f"cohort={cohort}", f"outdir={outdir}")
        text = run.stdout + run.stderr  # a dry run prints to stdout
        assert run.returncode != 0 and message in text, text[-2000:]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    usage = next(line for line in readme.splitlines() if "stop after Zarr" in line)
    args = usage.split("snakemake", 1)[1].split("#")[0].split()
    assert args.index("ingest") < args.index("--config")
    args = [a.replace("my_cohort.csv", "ok.csv").replace("my_results", "out") for a in args]
    dry = run_snakemake(tmp_path, *[a for a in args if a not in ("--cores", "8")], "-n")
    assert dry.returncode == 0 and "ingest_study" in dry.stdout, dry.stderr[-2000:]
