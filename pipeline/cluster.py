"""Where parallel work runs: this machine's joblib workers, or a Dask cluster through joblib's dask backend."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import joblib

from pipeline.validation import ConfigError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def joblib_backend(cluster: str | None) -> Iterator[None]:
    """Run joblib work inside the block on ``cluster``: None (local joblib), ``local:N`` or ``tcp://host:port``.

    ``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded worker processes on loopback and
    stops it afterwards; an address connects to a running scheduler. The dashboard address is logged.
    """
    if cluster is None:
        yield
        return
    from dask.distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if cluster.startswith("local:") and cluster[6:].isdigit() and int(cluster[6:]) >= 1:
            local = stack.enter_context(
                LocalCluster(n_workers=int(cluster[6:]), threads_per_worker=1, processes=True, host="127.0.0.1")
            )
            client = stack.enter_context(Client(local))
        elif cluster.startswith("tcp://"):
            client = stack.enter_context(Client(cluster))
        else:
            raise ConfigError(
                f"cluster must be null, 'local:N' (N >= 1 worker processes) or a scheduler address 'tcp://host:port'. "
                f"Received: cluster={cluster!r}"
            )
        log.info("running on Dask cluster %s; dashboard: %s", client.scheduler.address, client.dashboard_link)
        with joblib.parallel_config(backend="dask"):
            yield
