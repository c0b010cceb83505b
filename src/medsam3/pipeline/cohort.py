"""Cohort tables: loading, validation, study ids, shards and per-study concept lists.

A :class:`Study` is one validated row. What crosses the Snakemake boundary as rule params is
its :class:`StudyRef` (id and table row, no path: Snakemake prints params and keeps them in
``.snakemake/``) and a :class:`Shard` of them, through ``to_params()`` / ``from_params()``;
each job reads its studies' paths from the table with :func:`resolve_studies`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from medsam3.agent.questions import plan_question

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
COHORT_COLUMNS = ("path", "study_id", "modality", "concepts", "question")


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
        row: the row's index among the table's data rows (0: the first row after the header).
        source_key: salted digest of the row's path, modality and study_id cells: which row
            this is, without naming its path (see :class:`StudyRef`).
        question: a clinical question ("is there a polyp?"); its concepts
            (:func:`medsam3.agent.questions.plan_question`) are added to ``concepts`` and its
            answer goes into the studies table.
    """

    study_id: str
    path: str
    modality: str | None
    concepts: tuple[str, ...]
    row: int = 0
    source_key: str = ""
    question: str = ""

    def ref(self) -> StudyRef:
        """What crosses the Snakemake boundary for this study: no path, see StudyRef."""
        return StudyRef(
            self.study_id, self.row, self.source_key, source_stamp(self.path), self.concepts
        )


@dataclass(frozen=True)
class StudyRef:
    """A study as rule params: its id and its row of the cohort table, never its path.

    Snakemake prints rule params, and keeps them in ``.snakemake/metadata``; source paths often
    name the patient, so jobs look the path up in the cohort table (:func:`resolve_studies`).

    Attributes:
        study_id: the study's id.
        row: its index among the table's data rows.
        source_key: ``Study.source_key``: the job checks that the row still holds this study.
        source_stamp: size and modification time of the source (:func:`source_stamp`): a
            changed source changes the params, so Snakemake re-runs the study's jobs.
        concepts: the study's phrases (empty for ingest, which does not use them).
    """

    study_id: str
    row: int
    source_key: str
    source_stamp: str
    concepts: tuple[str, ...] = ()

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params (concepts as a list)."""
        params = asdict(self)
        params["concepts"] = list(self.concepts)
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> StudyRef:
        """Rebuild from :meth:`to_params` output."""
        return cls(**{**params, "concepts": tuple(params["concepts"])})

    def source_only(self) -> StudyRef:
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
        studies: its cohort rows as references, in table order.
    """

    name: str
    studies: tuple[StudyRef, ...]

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params."""
        return {"name": self.name, "studies": [s.to_params() for s in self.studies]}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Shard:
        """Rebuild from :meth:`to_params` output."""
        return cls(params["name"], tuple(StudyRef.from_params(s) for s in params["studies"]))


def shard_studies(studies: Sequence[StudyRef], shard_size: int) -> dict[str, Shard]:
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


def source_stamp(path: str | Path) -> str:
    """Size and modification time of a source ("missing" when it does not exist).

    A folder's time changes when files are added, removed or renamed in it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a cohort table from CSV (UTF-8) or Parquet: all cells as strings, blanks as None.

    Args:
        path: the table.

    Returns:
        One row per data row, in file order (blank CSV lines skipped).

    Raises:
        CohortError: a missing file, a CSV that is not UTF-8 (the message names the line and
            how to convert it) or whose rows hold more or fewer fields than its header (the
            message names the row).
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"cohort table {path} does not exist; pass --config cohort=PATH")
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
        columns = {c: [_clean_cell(v) for v in table[c]] for c in table.columns}
    else:
        header, rows = _read_csv(path)
        columns = {c: [_clean_cell(r[k]) for r in rows] for k, c in enumerate(header)}
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in columns.items()}, dtype=object)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a UTF-8 CSV, each row as long as the header."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CohortError(
            f"cohort table {path} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (the "
            "file is probably Latin-1 or Windows-1252); save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`"
        ) from None
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    if not records:
        raise CohortError(f"cohort table {path} is empty; it needs a header with 'path'")
    header, rows = [h.strip() for h in records[0]], records[1:]
    for number, fields in enumerate(rows, start=2):  # row 1 is the header
        if len(fields) != len(header):
            raise CohortError(
                f"cohort table {path} row {number}: {len(fields)} fields but the header has "
                f"{len(header)} ({', '.join(header)}); quote a cell that holds a comma "
                '(e.g. "a, b") or remove the extra field'
            )
    return header, rows


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
        Studies in table order, each with its row index and source key.

    Raises:
        CohortError: a CSV that is not UTF-8 or has rows of the wrong length, a missing
            ``path`` column, an empty path cell, bad or duplicate study ids.
    """
    table = _checked_table(path)
    base = Path(path).resolve().parent
    studies, seen = [], {}
    for i, row in enumerate(table.to_dict("records")):
        study = _study_from_row(row, i, path, base, salt)
        if study.study_id in seen:
            raise CohortError(
                f"cohort table {path} row {i + 2}: study_id {study.study_id!r} repeats row "
                f"{seen[study.study_id]}"
            )
        seen[study.study_id] = i + 2  # row 1 is the header
        studies.append(study)
    return studies


def resolve_studies(path: str | Path, salt: str, refs: Sequence[StudyRef]) -> list[Study]:
    """The studies of rule params, with their paths read from the cohort table (in a job).

    Args:
        path: the cohort table the workflow was started with.
        salt: config ``study_id_salt``.
        refs: the studies' references (rule params).

    Returns:
        One Study per reference: its row's path, modality and concepts as the workflow planned
        them (``ref.concepts``).

    Raises:
        CohortError: a row no longer holds its study (the table changed since the run started).
    """
    table = _checked_table(path)
    base = Path(path).resolve().parent
    studies = []
    for ref in refs:
        study = None
        if 0 <= ref.row < len(table):
            study = _study_from_row(table.iloc[ref.row].to_dict(), ref.row, path, base, salt)
        if study is None or study.source_key != ref.source_key:
            raise CohortError(
                f"cohort table {path} row {ref.row + 2} no longer holds study {ref.study_id} "
                "(the table changed since this run started); run snakemake again"
            )
        studies.append(replace(study, study_id=ref.study_id, concepts=ref.concepts))
    return studies


def _checked_table(path: str | Path) -> pd.DataFrame:
    """The table, with its 'path' column checked."""
    table = read_table(path)
    if "path" not in table.columns:
        raise CohortError(f"cohort table {path}: no 'path' column (columns: {list(table.columns)})")
    return table


def _study_from_row(row: dict, index: int, table: str | Path, base: Path, salt: str) -> Study:
    where = f"cohort table {table} row {index + 2}"
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
    cells = "\x00".join(row.get(k) or "" for k in ("path", "modality", "study_id"))
    key = hashlib.sha256(f"{salt}\x00{cells}".encode()).hexdigest()[:16]
    modality = (row.get("modality") or "").lower() or None
    concepts = split_concepts(row.get("concepts"))
    question = str(row.get("question") or "").strip()
    if question:
        concepts = tuple(dict.fromkeys(concepts + plan_question(question).concepts))
    return Study(study_id, str(source), modality, concepts, index, key, question)


def concepts_for(
    study: Study,
    modality: str | None,
    defaults: dict[str, list[str]],
    region: str | None = None,
) -> list[str]:
    """Concepts to segment for a study: the table's, else config defaults for its modality
    and body region.

    Args:
        study: the cohort row.
        modality: modality detected at ingest (used when the table has none).
        defaults: config ``default_concepts``: "<modality>/<region>" (e.g. "ct/head") or
            "<modality>" -> phrases, with "*" as fallback.
        region: the study's body region (``io.body_region``), or None when unknown.

    Returns:
        Phrases (possibly empty when no default applies): the first of
        ``defaults["<modality>/<region>"]``, ``defaults["<modality>"]``, ``defaults["*"]`` that
        names any.
    """
    if study.concepts:
        return list(study.concepts)
    key = (study.modality or modality or "").lower()
    keys = ([f"{key}/{region}"] if region else []) + [key, "*"]
    return next((list(defaults[k]) for k in keys if defaults.get(k)), [])
