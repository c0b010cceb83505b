"""Cohort tables: loading, validation, study ids, shards and per-study concept lists.

A :class:`Study` (one validated row) and a :class:`Shard` (the studies one segment job takes)
cross the Snakemake boundary as rule params through ``to_params()`` / ``from_params()``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_SALT = "medsam3"


def derive_study_id(key: str, salt: str = DEFAULT_SALT, prefix: str = "s") -> str:
    """Derive a file-safe study id from a path or DICOM UIDs by a salted hash.

    No patient identifier survives: the key (a path, or Study/Series Instance UIDs joined by
    "/") is hashed with the salt, so ids are stable for one salt and unlinkable without it.

    Args:
        key: source path or UID string.
        salt: secret salt from config (``study_id_salt``).
        prefix: id prefix.

    Returns:
        e.g. "s-3f9a0c1b2d4e" (prefix, dash, 12 hex digits).
    """
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()
    return f"{prefix}-{digest[:12]}"


STUDY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
COHORT_COLUMNS = ("path", "study_id", "modality", "concepts")


class CohortError(ValueError):
    """A cohort table that cannot be used; the message names the row and the fix."""


@dataclass(frozen=True)
class Study:
    """One row of a cohort table after validation.

    Attributes:
        study_id: file-safe id (from the table, else a salted hash of the path).
        path: absolute source path (file, folder or .dcmlist); may not exist (recorded at ingest).
        modality: lower-case modality from the table, or None (detected at ingest).
        concepts: phrases from the table, or () to use the per-modality defaults from config.
    """

    study_id: str
    path: str
    modality: str | None
    concepts: tuple[str, ...]

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params (concepts as a list)."""
        return {
            "study_id": self.study_id,
            "path": self.path,
            "modality": self.modality,
            "concepts": list(self.concepts),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Study:
        """Rebuild from :meth:`to_params` output."""
        return cls(
            params["study_id"], params["path"], params["modality"], tuple(params["concepts"])
        )

    def source_only(self) -> Study:
        """The study without its concepts: what ingest depends on.

        The ingest rule's params hold this, so that editing a study's concepts re-runs its
        segmentation shard but not its ingest (which would rewrite the store and drop its masks).
        """
        return replace(self, concepts=())


@dataclass(frozen=True)
class Shard:
    """The studies one segment job segments with one model load.

    Attributes:
        name: ``shard-0000``, ``shard-0001``, ... in cohort-table order.
        studies: its cohort rows, in table order.
    """

    name: str
    studies: tuple[Study, ...]

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params."""
        return {"name": self.name, "studies": [s.to_params() for s in self.studies]}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Shard:
        """Rebuild from :meth:`to_params` output."""
        return cls(params["name"], tuple(Study.from_params(s) for s in params["studies"]))


def shard_studies(studies: Sequence[Study], shard_size: int) -> dict[str, Shard]:
    """Deterministic shards in cohort-table order: ``shard-0000`` holds the first K studies.

    Appending rows to a cohort only adds shards or fills the last one, so earlier shards keep
    their members and are not recomputed.

    Args:
        studies: the cohort in table order.
        shard_size: studies per shard (config ``shard_size``).

    Returns:
        Shard name -> Shard, in order.
    """
    shards = {}
    for i in range(0, len(studies), shard_size):
        name = f"shard-{i // shard_size:04d}"
        shards[name] = Shard(name, tuple(studies[i : i + shard_size]))
    return shards


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a cohort table from CSV or Parquet (all columns as strings, blanks as None)."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"cohort table {path} does not exist; pass --config cohort=PATH")
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, comment=None)
    columns = {
        col: pd.Series([_clean_cell(v) for v in table[col]], dtype=object) for col in table.columns
    }
    table = pd.DataFrame(columns, dtype=object)
    return table


def _clean_cell(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def split_concepts(cell: str | None) -> tuple[str, ...]:
    """Split a ';'-separated concepts cell into stripped, non-empty phrases."""
    if not cell:
        return ()
    return tuple(" ".join(p.split()) for p in cell.split(";") if p.strip())


def load_cohort(path: str | Path, salt: str = DEFAULT_SALT) -> list[Study]:
    """Load and validate a cohort table.

    Args:
        path: CSV or Parquet with column ``path`` and optional ``study_id``, ``modality``,
            ``concepts`` (';'-separated). Relative paths resolve against the table's folder.
        salt: salt for derived study ids.

    Returns:
        Studies in table order.

    Raises:
        CohortError: missing ``path`` column, empty path cell, bad or duplicate study ids.
    """
    table = read_table(path)
    if "path" not in table.columns:
        raise CohortError(f"cohort table {path}: no 'path' column (columns: {list(table.columns)})")
    base = Path(path).resolve().parent
    studies, seen = [], {}
    for i, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        studies.append(_study_from_row(row, i, path, base, salt, seen))
    return studies


def _study_from_row(
    row: dict, line: int, table: str | Path, base: Path, salt: str, seen: dict
) -> Study:
    where = f"cohort table {table} row {line}"
    if not row.get("path"):
        raise CohortError(f"{where}: empty 'path'; give a file or folder")
    source = Path(row["path"]).expanduser()
    source = source if source.is_absolute() else (base / source)
    source = Path(str(source.resolve()) if source.exists() else str(source))
    study_id = row.get("study_id") or derive_study_id(str(source), salt)
    if not STUDY_ID_RE.match(study_id):
        raise CohortError(
            f"{where}: study_id {study_id!r} is not file-safe; use letters, digits, '.', '_', '-'"
        )
    if study_id in seen:
        raise CohortError(f"{where}: study_id {study_id!r} repeats row {seen[study_id]}")
    seen[study_id] = line
    modality = (row.get("modality") or "").lower() or None
    return Study(study_id, str(source), modality, split_concepts(row.get("concepts")))


def concepts_for(study: Study, modality: str | None, defaults: dict[str, list[str]]) -> list[str]:
    """Concepts to segment for a study: the table's, else config defaults for its modality.

    Args:
        study: the cohort row.
        modality: modality detected at ingest (used when the table has none).
        defaults: config ``default_concepts``: modality -> phrases, with "*" as fallback.

    Returns:
        Phrases (possibly empty when no default applies).
    """
    if study.concepts:
        return list(study.concepts)
    key = (study.modality or modality or "").lower()
    return list(defaults.get(key) or defaults.get("*") or [])
