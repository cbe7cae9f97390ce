"""One logger for task code: Prefect's run logger inside a run, plain logging outside."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

Logger = logging.Logger | logging.LoggerAdapter


def run_logger() -> Logger:
    """The current flow/task run's logger (shown in the Prefect UI), else 'dbbackup'."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("dbbackup")
