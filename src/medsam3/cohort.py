"""Cohort tables: loading, validation, study-id derivation and per-study concept lists."""

from __future__ import annotations

import hashlib

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
