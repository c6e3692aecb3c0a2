"""Where parallel work runs: this machine's joblib workers, or a Dask cluster (directly or through joblib)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import joblib

from pipeline.validation import LOCAL_CLUSTER, check_cluster

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

@contextlib.contextmanager
def dask_client(cluster: str) -> Iterator[Client]:
    """A ``distributed.Client`` on ``cluster`` (``local:N`` or ``tcp://host:port``) for the block; logs the dashboard.

    ``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded worker processes on loopback and
    stops it afterwards; an address connects to a running scheduler.
    """
    from dask.distributed import Client, LocalCluster

    local = LOCAL_CLUSTER.fullmatch(check_cluster("cluster", cluster))
    with contextlib.ExitStack() as stack:
        target = cluster
        if local:
            target = stack.enter_context(
                LocalCluster(n_workers=int(local[1]), threads_per_worker=1, processes=True, host="127.0.0.1")
            )
        client = stack.enter_context(Client(target))
        log.info("running on Dask cluster %s; dashboard: %s", client.scheduler.address, client.dashboard_link)
        yield client


@contextlib.contextmanager
def joblib_backend(cluster: str | None) -> Iterator[None]:
    """Run joblib work inside the block on ``cluster``: None (local joblib), or a Dask cluster (see ``dask_client``)
    through joblib's dask backend."""
    if cluster is None:
        yield
        return
    with dask_client(cluster), joblib.parallel_config(backend="dask"):
        yield
