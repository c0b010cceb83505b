"""Cohort table loading, validation and study ids."""

from __future__ import annotations

import pandas as pd
import pytest

from medsam3.pipeline.cohort import (
    CohortError,
    Study,
    concepts_for,
    derive_study_id,
    load_cohort,
    resolve_studies,
)


def test_derived_ids_are_salted_hashes_without_the_path(tmp_path):
    a = derive_study_id("/data/DOE^JOHN/series1", "salt-a")
    b = derive_study_id("/data/DOE^JOHN/series1", "salt-b")
    assert a != b and a.startswith("s-") and len(a) == 14
    assert "DOE" not in a and a == derive_study_id("/data/DOE^JOHN/series1", "salt-a")


def test_csv_and_parquet_load_the_same(tmp_path):
    (tmp_path / "img.png").write_bytes(b"x")
    rows = [
        {"path": "img.png", "study_id": "", "modality": "XRAY", "concepts": "lung; heart ;"},
        {"path": "/abs/missing.nii.gz", "study_id": "case-2", "modality": "", "concepts": ""},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    for table in ("c.csv", "c.parquet"):
        first, second = load_cohort(tmp_path / table, salt="s")
        assert first.path == str((tmp_path / "img.png").resolve())
        assert first.study_id == derive_study_id(first.path, "s")
        assert first.modality == "xray" and first.concepts == ("lung", "heart")
        assert (second.study_id, second.path, second.modality, second.concepts, second.row) == (
            "case-2",
            "/abs/missing.nii.gz",
            None,
            (),
            1,
        )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"file": "a.png"}], "no 'path' column"),
        ([{"path": ""}], "row 2: empty 'path'"),
        ([{"path": "a", "study_id": "../etc"}], "not file-safe"),
        (
            [{"path": "a", "study_id": "x"}, {"path": "b", "study_id": "x"}],
            "row 3: study_id 'x' repeats row 2",
        ),
    ],
)
def test_bad_tables_name_the_row_and_fix(tmp_path, rows, message):
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(CohortError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_cohort(tmp_path / "c.csv")


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nope.csv")


def test_concepts_fall_back_to_modality_defaults():
    defaults = {"ct": ["liver"], "*": ["lesion"]}
    assert concepts_for(Study("a", "p", None, ("polyp",)), "ct", defaults) == ["polyp"]
    assert concepts_for(Study("a", "p", None, ()), "ct", defaults) == ["liver"]
    assert concepts_for(Study("a", "p", "mri", ()), "ct", defaults) == ["lesion"]


def test_a_latin1_table_names_its_line_and_the_conversion(tmp_path):
    text = "path,modality,concepts\na.png,xray,lung\nb.png,xray,poumon gauche \xe9\n"
    (tmp_path / "c.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(CohortError, match=r"c.csv line 3: byte 0xe9 is not UTF-8.*iconv"):
        load_cohort(tmp_path / "c.csv")


@pytest.mark.parametrize(
    ("lines", "row"),
    [
        (["a.png,xray,lung", "b.png,xray,lung,heart"], 3),
        (["a.png,xray,lung,heart", "b.png,xray,lung,heart"], 2),  # pandas took col 1 as index
        (["a.png,xray"], 2),
    ],
)
def test_rows_with_more_or_fewer_fields_than_the_header_are_named(tmp_path, lines, row):
    (tmp_path / "c.csv").write_text("\n".join(["path,modality,concepts", *lines]) + "\n")
    with pytest.raises(CohortError, match=rf"row {row}: \d fields but the header has 3"):
        load_cohort(tmp_path / "c.csv")


def test_a_quoted_comma_is_one_field(tmp_path):
    (tmp_path / "c.csv").write_text('path,concepts\n"scan, final.png","lung; heart"\n')
    (study,) = load_cohort(tmp_path / "c.csv")
    assert study.path.endswith("scan, final.png") and study.concepts == ("lung", "heart")


def test_jobs_find_paths_by_reference_and_notice_an_edited_table(tmp_path):
    rows = [{"path": "DOE_JOHN/ct.nii.gz", "concepts": "liver"}, {"path": "b.png"}]
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    studies = load_cohort(tmp_path / "c.csv", salt="s")
    refs = [s.ref() for s in studies]
    assert "DOE_JOHN" not in str([r.to_params() for r in refs])
    assert resolve_studies(tmp_path / "c.csv", "s", refs[::-1]) == studies[::-1]
    pd.DataFrame(rows[::-1]).to_csv(tmp_path / "c.csv", index=False)  # rows swapped
    with pytest.raises(CohortError, match="row 2 no longer holds study s-.*changed"):
        resolve_studies(tmp_path / "c.csv", "s", refs[:1])
