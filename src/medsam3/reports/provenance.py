"""Provenance rows: which code, config, backend and checkpoint produced a result, when and where."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from medsam3._version import __version__
from medsam3.io.common import file_digest

__all__ = ["config_hash", "file_digest", "git_commit", "iso_time", "provenance_row"]

_REPO = Path(__file__).resolve().parents[3]


def config_hash(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys, compact separators).

    Args:
        config: JSON-serialisable mapping (non-JSON values are stringified).

    Returns:
        64-character hex digest; equal for equal configs regardless of key order.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(repo: Path = _REPO) -> str | None:
    """The commit of the source checkout, when it is a git work tree.

    Args:
        repo: folder inside the work tree (default: the folder holding ``src/medsam3``).

    Returns:
        40-hex commit id, with ``-dirty`` appended when tracked files differ; None without git
        or outside a work tree (e.g. an installed wheel).
    """
    try:
        run = dict(
            cwd=repo,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=10,
            check=True,
        )
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if status.strip() else commit


def iso_time(epoch_s: float) -> str:
    """UTC ISO-8601 time (seconds precision) of a ``time.time()`` value."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="seconds")


def _torch_version() -> str | None:
    """torch's version, or None when torch is not importable."""
    try:  # here, not at the top: torch takes 7 s to import and is optional for the report
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def provenance_row(
    job: str,
    backend: str,
    checkpoint_digest: str,
    config: dict,
    start: float,
    end: float,
    warnings: tuple[str, ...] | list[str] = (),
) -> dict:
    """One row of the provenance table (``reports.PROVENANCE_SCHEMA``).

    Args:
        job: job name, e.g. ``"segment/shard-0003"`` (no patient identifiers).
        backend: segmentation backend name ("compact", "sam3", ...).
        checkpoint_digest: sha256 of the checkpoint file(s) used.
        config: the run configuration (hashed, not stored).
        start: job start, seconds since the epoch (``time.time()``).
        end: job end, seconds since the epoch.
        warnings: configuration warnings of the run.

    Returns:
        dict with job, package_version, git_commit, config_sha256, backend, checkpoint_digest,
        start, end (UTC ISO strings), duration_s, host, python_version, torch_version, warnings.
    """
    return {
        "job": job,
        "package_version": __version__,
        "git_commit": git_commit(),
        "config_sha256": config_hash(config),
        "backend": backend,
        "checkpoint_digest": checkpoint_digest,
        "start": iso_time(start),
        "end": iso_time(end),
        "duration_s": float(end - start),
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
        "torch_version": _torch_version(),
        "warnings": list(warnings),
    }
