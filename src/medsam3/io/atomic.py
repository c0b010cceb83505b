"""Atomic writes: write beside the target, then rename, so readers never see a partial file.

Every staging name, of files here and of Zarr stores and labels (``io.zarr_store``), is
``temporary_name(target, tag)``: hidden, with ``.tmp-`` or ``.old-`` and 8 hex digits. A killed
process leaves such names behind; :func:`remove_temporaries` finds and removes them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8}(?:\.[^.]+)*$")
_OLD_LABEL_TEMPORARY = re.compile(r"^\.tmp-.+-[0-9a-f]{8}$")  # label staging before 0.1.1


def temporary_name(path: Path, tag: str = "tmp", keep_suffix: bool = True) -> Path:
    """A hidden, unique sibling of ``path`` for staging a write (``tag``: "tmp" or "old").

    With ``keep_suffix`` the name keeps the target's suffixes (``.nii.gz`` stays last), so
    writers that choose a format by extension still work: ``liver.nii.gz`` ->
    ``.liver.tmp-1a2b3c4d.nii.gz``; without, the tag goes last: ``s-1.zarr`` ->
    ``.s-1.zarr.tmp-1a2b3c4d`` (so that a staging store never matches ``*.zarr``).
    """
    suffix = "".join(path.suffixes) if keep_suffix else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{tag}-{uuid.uuid4().hex[:8]}{suffix}")


def is_temporary(name: str) -> bool:
    """True for a staging name made by :func:`temporary_name` (or by older versions)."""
    return bool(_TEMPORARY.match(name) or _OLD_LABEL_TEMPORARY.match(name))


def remove_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove what killed writers left in ``folder``: files and folders with staging names.

    Only safe while nothing else writes into ``folder`` (the pipeline holds the output
    folder's run lock, and one job owns each study).

    Args:
        folder: the folder to clean (missing: nothing to do).
        recursive: also clean its subfolders.

    Returns:
        The removed paths.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if is_temporary(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += remove_temporaries(entry, recursive=True)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the target's suffixes (e.g. ``.nii.gz``) so writers that choose a
    format by extension still work.

    Args:
        path: final destination file.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write a JSON document (sorted keys, indented) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
