"""Entry-point plumbing for the DVC stages: logging set-up and clean exits on user errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from pipeline.validation import UserError

log = logging.getLogger("pipeline")


def configure_logging(level: int = logging.INFO) -> None:
    """Readable timestamped logs on stderr; TensorFlow C++ info and warning logs and Dask's own info lines (about
    30 a cluster run, and harmless shutdown noise) are turned off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # read when dask is imported, here and in workers
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run(main: Callable[[], object]) -> None:
    """Run ``main`` with logging configured; a user error is logged as one line and exits with status 2."""
    configure_logging()
    try:
        main()
    except UserError as error:
        log.error("%s", error)
        sys.exit(2)
