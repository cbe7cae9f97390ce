"""Trying a storage write again after a transient error, without redoing what came before."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.blocks.process import interrupted, pause
from prefect_dbbackup.tasks.logs import run_logger

T = TypeVar("T")


def retry_transient(call: Callable[[], T], what: str, delays: tuple[float, ...]) -> T:
    """call(), tried again after each of `delays` (seconds) while it fails with a retryable
    DbBackupError. The last failure is raised marked not retryable: running the whole
    task again (dumping again) cannot fix the storage."""
    left = list(delays)
    while True:
        try:
            return call()
        except Exception as exc:
            retryable = isinstance(exc, DbBackupError) and exc.retryable  # never a bug
            if not left or interrupted() or not retryable:
                exc.retryable = False
                raise
            delay = left.pop(0)
            run_logger().warning(
                "%s failed: %s; trying again in %.0f s (%d more attempt(s))",
                what,
                exc,
                delay,
                len(left) + 1,
            )
            pause(delay)
