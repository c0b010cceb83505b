"""Dask clusters for medsam3: a LocalCluster by default, a SLURMCluster on HPC systems.

The workflow config carries an optional ``dask`` section (all keys optional)::

    dask:
      cluster: local          # "local" (default) or "slurm"
      n_workers: 2            # local: worker processes
      threads_per_worker: 1   # local
      processes: true         # local: processes (true) or threads in this process (false)
      memory_limit: "4GB"     # local: per worker ("auto" = share of RAM)
      queue: cpu              # slurm: partition (sbatch -p)
      account: my_lab         # slurm: sbatch -A
      cores: 4                # slurm: CPUs per SLURM job (sbatch --cpus-per-task)
      memory: "16GB"          # slurm: memory per SLURM job (sbatch --mem)
      walltime: "01:00:00"    # slurm: sbatch -t
      processes_per_job: 1    # slurm: dask worker processes per SLURM job
      jobs: 1                 # slurm: SLURM jobs to start (cluster.scale(jobs=N))
      log_directory: null     # slurm: where worker stdout/stderr go
      job_extra_directives: []  # slurm: extra "#SBATCH" options, e.g. ["--gpus=1"]

Use the context manager so that workers (and SLURM jobs) are always released::

    with dask_client(config) as client:
        ddf.groupby("concept").area_mm2.sum().compute()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dask_jobqueue import SLURMCluster
from distributed import Client, LocalCluster

LOCAL_DEFAULTS: dict[str, Any] = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "memory_limit": "auto",
}
SLURM_DEFAULTS: dict[str, Any] = {
    "queue": None,
    "account": None,
    "cores": 1,
    "memory": "2GB",
    "walltime": "01:00:00",
    "processes_per_job": 1,
    "jobs": 1,
    "log_directory": None,
    "job_extra_directives": [],
}
KINDS = ("local", "slurm")


def dask_settings(config: dict | None) -> dict[str, Any]:
    """Return the ``dask`` section of a workflow config with defaults filled in.

    Args:
        config: Workflow config (the dict Snakemake loads from config.yaml) or None.

    Returns:
        Dict with key ``cluster`` ("local" or "slurm") and the defaults of that kind,
        overridden by the config's values.

    Raises:
        ValueError: ``dask`` is not a mapping or ``dask.cluster`` is unknown.
    """
    section = (config or {}).get("dask") or {}
    if not isinstance(section, dict):
        raise ValueError(f"config['dask'] must be a mapping, got {type(section).__name__}")
    kind = str(section.get("cluster", "local")).lower()
    if kind not in KINDS:
        raise ValueError(
            f"config['dask']['cluster'] = {kind!r} is unknown; use one of {', '.join(KINDS)}"
        )
    defaults = LOCAL_DEFAULTS if kind == "local" else SLURM_DEFAULTS
    return {"cluster": kind, **defaults, **{k: v for k, v in section.items() if k != "cluster"}}


def make_local_cluster(settings: dict[str, Any]) -> LocalCluster:
    """Start a LocalCluster on this machine.

    Args:
        settings: Output of ``dask_settings`` with ``cluster == "local"``.

    Returns:
        Running LocalCluster with ``n_workers`` workers of ``threads_per_worker`` threads.
    """
    return LocalCluster(
        n_workers=int(settings["n_workers"]),
        threads_per_worker=int(settings["threads_per_worker"]),
        processes=bool(settings["processes"]),
        memory_limit=settings["memory_limit"],
        dashboard_address=settings.get("dashboard_address"),
    )


def make_slurm_cluster(settings: dict[str, Any], scale: bool = True):
    """Create a dask-jobqueue SLURMCluster; each SLURM job runs ``processes_per_job`` workers.

    Args:
        settings: Output of ``dask_settings`` with ``cluster == "slurm"``.
        scale: Submit ``settings["jobs"]`` SLURM jobs now (``cluster.scale(jobs=N)``);
            False only builds the cluster, e.g. to inspect ``cluster.job_script()``.

    Returns:
        dask_jobqueue.SLURMCluster (its scheduler runs in this process).

    Raises:
        ValueError: cores, memory or walltime missing.
    """
    for key in ("cores", "memory", "walltime"):
        if not settings.get(key):
            raise ValueError(f"config['dask']['{key}'] is required when dask.cluster is 'slurm'")
    cluster = SLURMCluster(
        queue=settings["queue"],
        account=settings["account"],
        cores=int(settings["cores"]),
        processes=int(settings["processes_per_job"]),
        memory=str(settings["memory"]),
        walltime=str(settings["walltime"]),
        log_directory=settings["log_directory"],
        job_extra_directives=list(settings["job_extra_directives"]),
        scheduler_options={"dashboard_address": settings.get("dashboard_address")},
    )
    if scale:
        cluster.scale(jobs=int(settings["jobs"]))
    return cluster


def get_dask_client(config: dict | None) -> Client:
    """Start the cluster named by ``config["dask"]["cluster"]`` and connect a client to it.

    Args:
        config: Workflow config; see the module docstring for the ``dask`` keys.

    Returns:
        distributed.Client; ``client.cluster`` is the LocalCluster or SLURMCluster. Close both
        with ``close_dask_client(client)`` or use the ``dask_client`` context manager.
    """
    settings = dask_settings(config)
    if settings["cluster"] == "slurm":
        cluster = make_slurm_cluster(settings)
    else:
        cluster = make_local_cluster(settings)
    try:
        return Client(cluster)
    except Exception:
        cluster.close()
        raise


def close_dask_client(client: Client) -> None:
    """Close a client from ``get_dask_client`` and its cluster (cancels SLURM worker jobs).

    Args:
        client: Client returned by ``get_dask_client``.

    Returns:
        None.
    """
    cluster = client.cluster
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def dask_client(config: dict | None) -> Iterator[Client]:
    """Context manager around ``get_dask_client`` that always closes client and cluster.

    Args:
        config: Workflow config; see the module docstring for the ``dask`` keys.

    Returns:
        Iterator yielding one distributed.Client.
    """
    client = get_dask_client(config)
    try:
        yield client
    finally:
        close_dask_client(client)
