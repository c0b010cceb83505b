"""Logging for workflow jobs and the CLI: one format, to a file and to stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def job_logging(log_path: str | Path, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send medsam3 log records to ``log_path`` (and stderr) while the block runs.

    An exception escaping the block is logged with its traceback before it propagates, so a
    job's log always says why it failed.

    Args:
        log_path: the job's log file (Snakemake's ``log:``); parent folders are created.
        level: logging level.

    Yields:
        The "medsam3" logger.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("medsam3")
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger
    except Exception:
        logger.exception("job failed")
        raise
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
