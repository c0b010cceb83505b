"""Cohort table loading, validation and study ids."""

from __future__ import annotations

import pandas as pd
import pytest

from medsam3.pipeline.cohort import CohortError, Study, concepts_for, derive_study_id, load_cohort


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
        assert second == Study("case-2", "/abs/missing.nii.gz", None, ())


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
