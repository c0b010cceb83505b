"""The output folder as a whole: its check, the run lock, and what killed runs left behind.

One run at a time may write an output folder. The Snakemake process of a run holds an
exclusive ``flock`` on ``Layout.lock()`` for as long as it lives (``workflow/rules/common.smk``
takes it while reading the Snakefile), so a second run on the same folder, started from any
working directory or host sharing the file system, stops with a message naming the first.
The kernel releases the lock when the process ends, ``kill -9`` included, so a crashed run
never needs its lock removed by hand.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from medsam3.io.atomic import remove_temporaries
from medsam3.pipeline.layout import Layout
from medsam3.reports.provenance import iso_time


class OutdirError(RuntimeError):
    """The output folder cannot be used; the message says why and what to do."""


def check_outdir(path: str | Path) -> Path:
    """The output folder as an absolute path, created when missing.

    Args:
        path: config ``outdir`` (relative to the working directory).

    Returns:
        The absolute folder.

    Raises:
        OutdirError: the path, or a folder above it, is a file.
    """
    folder = Path(path).expanduser().absolute()
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise OutdirError(
                f"outdir {folder} cannot be created: {part} is a file, not a folder; "
                "pass --config outdir=<a folder>"
            )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lock_outdir(layout: Layout) -> IO[str]:
    """Take the run lock of an output folder, or refuse with the holder's details.

    Args:
        layout: the output layout.

    Returns:
        The open lock file; the lock lasts while it stays open (keep a reference to it for
        the life of the run).

    Raises:
        OutdirError: another process holds the lock.
    """
    path = layout.lock()
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutdirError(
            f"outdir {layout.root} is in use by another medsam3 run ({holder}); wait for it to "
            "finish or stop it, or pass another --config outdir=..."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {iso_time(time.time())}\n")
    handle.flush()
    return handle


def remove_stale_files(layout: Layout) -> list[Path]:
    """Remove the staging files and stores of killed runs from the folders of a whole run.

    Call it while holding the run lock, before any job starts: nothing else writes then.
    A study's own folders (its store's labels, its masks) are cleaned by the job that next
    writes them (:func:`remove_stale_study_files`).

    Args:
        layout: the output layout.

    Returns:
        The removed paths.
    """
    return [p for folder in layout.flat_folders() for p in remove_temporaries(folder)]


def remove_stale_study_files(layout: Layout, study_id: str) -> list[Path]:
    """Remove what a killed job left in one study's label and mask folders.

    Safe in the job that owns the study (one job per study, one run per output folder).

    Args:
        layout: the output layout.
        study_id: the study.

    Returns:
        The removed paths.
    """
    labels = remove_temporaries(layout.store(study_id) / "labels")
    return labels + remove_temporaries(layout.masks(study_id), recursive=True)
